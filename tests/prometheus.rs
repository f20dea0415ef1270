//! The Prometheus example (`examples/prometheus.rs`), scraped with a real HTTP GET: after a
//! simulated workload through the session layer, `/metrics` serves ryw's instruments in
//! Prometheus text format, and the reads it counts are the reads the workload made.
//!
//! And the operations files under `deploy/` query only what that scrape holds: every metric the
//! Grafana dashboard and the Prometheus alert rules read, and every label they match or group
//! by, is one the exporter emits, so renaming an instrument or an attribute fails here.

#[path = "../examples/prometheus.rs"]
#[allow(dead_code)]
mod example;

use http::{Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry::metrics::MeterProvider;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use ryw::telemetry::{DbCallEvent, Observer, OutboxEvent};
use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tower::{service_fn, Layer, Service, ServiceExt};

/// The sum of every sample of `metric` (any labels) in a Prometheus text exposition.
fn total(body: &str, metric: &str) -> f64 {
    body.lines()
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Serves `registry` as the example does and fetches `/metrics` with a real HTTP GET.
async fn scrape(registry: prometheus::Registry) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, example::router(registry)).await });

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<axum::body::Bytes>>();
    let response = client
        .get(format!("http://{addr}/metrics").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_serves_what_the_workload_did() {
    let registry = prometheus::Registry::new();
    let provider = example::provider(&registry);
    let report = example::workload(&provider).await;
    assert!(report.reads > 0);
    assert!(report.check.violations.is_empty());
    let body = scrape(registry).await;

    assert!(body.contains("# TYPE ryw_reads_total counter"), "{body}");
    assert_eq!(
        total(&body, "ryw_reads_total"),
        report.reads as f64,
        "{body}"
    );
    let pending: f64 = body
        .lines()
        .filter(|l| l.starts_with("ryw_reads_total{") && l.contains("ryw_visibility=\"pending\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(pending, report.pending_reads as f64, "{body}");
    assert!(total(&body, "ryw_writes_total") > 0.0, "{body}");
    assert!(
        body.contains("# TYPE ryw_request_duration_seconds histogram"),
        "{body}"
    );
    // Never a session id, key or token as a label.
    assert!(
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .all(|l| !l.contains("session") && !l.contains("token")),
        "{body}"
    );
}

/// What the simulated workload does not reach, reported on the same provider through the same
/// entry points a service uses: the HTTP layer's token instruments and session store (a new
/// session, a continued one, a tampered token), session and principal records (a principal
/// record store that is down), a conditional write that loses, a store call that worked and one
/// that failed, and one event of each outbox outcome.
async fn the_rest_of_a_service(provider: &SdkMeterProvider) {
    use ryw::principal::PrincipalRecords;
    use ryw::record::{InMemoryRecordStore, SessionRecords};
    use ryw::signing::{SigningKey, TokenAuthority};
    use ryw::ReadYourWritesLayer;
    use ryw_http::{ServerSessionLayer, DEFAULT_HEADER};
    use ryw_sim::{SimAdapter, SimConfig, SimRequest, SimStore};

    let meter = provider.meter("ryw");
    let observer = Arc::new(ryw_otel::OtelObserver::new(&meter));

    let authority = Arc::new(TokenAuthority::new(SigningKey::new(1, [3u8; 32]).unwrap()));
    let layer = ServerSessionLayer::new(authority).observer(observer.clone());
    ryw_otel::observe_session_store(&meter, layer.store().unwrap());
    let mut http = layer.layer(service_fn(|_: Request<String>| async {
        Ok::<_, Infallible>(Response::new(String::new()))
    }));
    let call = |token: Option<String>| {
        let mut request = Request::builder();
        if let Some(token) = token {
            request = request.header(DEFAULT_HEADER, token);
        }
        request.body(String::new()).unwrap()
    };
    let response = http.ready().await.unwrap().call(call(None)).await.unwrap();
    let token = response.headers()[DEFAULT_HEADER]
        .to_str()
        .unwrap()
        .to_owned();
    let response = http
        .ready()
        .await
        .unwrap()
        .call(call(Some(token.clone())))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut tampered = token.into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let response = http
        .ready()
        .await
        .unwrap()
        .call(call(Some(String::from_utf8(tampered).unwrap())))
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    let shared = Arc::new(InMemoryRecordStore::new());
    ryw_otel::observe_records(&meter, Arc::new(SessionRecords::new(shared.clone())));
    let principals = Arc::new(PrincipalRecords::new(
        shared.clone(),
        SigningKey::new(0, [0x5a; 32]).unwrap(),
    ));
    ryw_otel::observe_principal_records(&meter, principals.clone());
    shared.set_unavailable(true);
    principals.enter(b"alice", &ryw::Session::new()).await;

    // A conditional write that loses to the version already there, reported.
    let store = SimStore::new(SimConfig::default().seed(3));
    let mut layered = ReadYourWritesLayer::new(SimAdapter::new())
        .clock(store.clock())
        .conflict_retries(0)
        .observer(observer.clone())
        .layer(store.client(0));
    let session = ryw::Session::new();
    layered
        .ready()
        .await
        .unwrap()
        .call(session.request(SimRequest::put("k", 1)))
        .await
        .unwrap();
    let lost = layered
        .ready()
        .await
        .unwrap()
        .call(session.request(SimRequest::put_if("k", 2, ryw::Version::new(99))))
        .await
        .unwrap_err();
    assert!(lost.is_conflict(), "{lost}");

    let mut call = DbCallEvent::new("aws.dynamodb", "GetItem", Duration::from_millis(3));
    observer.db_call(&call);
    call.error_type = Some("ProvisionedThroughputExceededException");
    observer.db_call(&call);
    for event in [
        OutboxEvent::Deferred { reason: "failed" },
        OutboxEvent::Replayed,
        OutboxEvent::DeadLettered { reason: "expired" },
        OutboxEvent::Refused { reason: "full" },
    ] {
        observer.outbox(&event);
    }
    // An outbox file's depth (the gauges live as long as the provider and keep the file open;
    // its directory is removed at once).
    let dir = std::env::temp_dir().join(format!("ryw-prometheus-outbox-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let outbox =
        ryw_outbox::Outbox::open(dir.join("outbox.redb"), ryw_outbox::OutboxConfig::default())
            .unwrap();
    ryw_otel::observe_outbox(&meter, Arc::new(outbox));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Each metric family of a Prometheus text exposition, with the names of its samples (a
/// histogram's `_bucket`, `_sum` and `_count`) and the label names they carry.
#[derive(Debug, Default)]
struct Exposition {
    /// Sample name to label names.
    samples: BTreeMap<String, BTreeSet<String>>,
    /// Family name (from `# TYPE`) to its type.
    families: BTreeMap<String, String>,
}

impl Exposition {
    fn parse(body: &str) -> Self {
        let mut exposition = Exposition::default();
        for line in body.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
                exposition.families.insert(name.into(), kind.into());
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            let labels = exposition.samples.entry(line[..end].into()).or_default();
            if line[end..].starts_with('{') {
                labels.extend(label_names(&line[end + 1..]));
            }
        }
        exposition
    }

    /// The family a sample name belongs to: itself, or the histogram whose `_bucket`, `_sum` or
    /// `_count` it is.
    fn family<'a>(&self, sample: &'a str) -> &'a str {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = sample.strip_suffix(suffix) {
                if self.families.get(base).is_some_and(|k| k == "histogram") {
                    return base;
                }
            }
        }
        sample
    }

    /// The label names on `metric`'s samples: a histogram's family name stands for all of them.
    fn labels(&self, metric: &str) -> Option<BTreeSet<String>> {
        let names: Vec<&String> = self
            .samples
            .keys()
            .filter(|s| *s == metric || self.family(s) == metric)
            .collect();
        if names.is_empty() {
            return None;
        }
        Some(
            names
                .into_iter()
                .flat_map(|s| self.samples[s].iter().cloned())
                .collect(),
        )
    }
}

/// The label names of a sample's `k="v",...}` (values may hold escaped quotes).
fn label_names(mut s: &str) -> Vec<String> {
    let mut names = Vec::new();
    while let Some(eq) = s.find('=') {
        names.push(s[..eq].trim_start_matches(',').trim().to_owned());
        // Skip the quoted value.
        let mut chars = s[eq + 1..].char_indices().skip(1);
        let mut end = s.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => {
                    end = eq + 1 + i + 1;
                    break;
                }
                _ => {}
            }
        }
        s = &s[end..];
        if s.starts_with('}') {
            break;
        }
    }
    names
}

/// What one PromQL expression reads: each metric selector with the label names its matchers
/// use, and the label names it aggregates or matches by.
#[derive(Debug, Default, PartialEq)]
struct Query {
    selectors: Vec<(String, Vec<String>)>,
    grouping: Vec<String>,
}

/// Words of PromQL that are not metric names when they stand alone (aggregation operators are
/// followed by `by`/`without` or their parenthesis; functions always by theirs).
const KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// Reads the metric selectors of a PromQL expression well enough for the queries of a
/// dashboard: string literals, range and subquery brackets, comments and Grafana's `$variables`
/// are skipped; a name followed by `(` is a function or operator; the label lists after `by`,
/// `without`, `on`, `ignoring`, `group_left` and `group_right` are grouping labels.
fn parse_promql(expr: &str) -> Query {
    let chars: Vec<char> = expr.chars().collect();
    let mut query = Query::default();
    let mut i = 0;
    let skip_string = |i: &mut usize| {
        let quote = chars[*i];
        *i += 1;
        while *i < chars.len() && chars[*i] != quote {
            if chars[*i] == '\\' {
                *i += 1;
            }
            *i += 1;
        }
        *i += 1;
    };
    let is_ident_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let next_non_space = |mut j: usize| {
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        j
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            skip_string(&mut i);
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c == '$' {
            // A Grafana variable: `$name`, `${name}` or `${name:format}`.
            i += 1;
            if i < chars.len() && chars[i] == '{' {
                while i < chars.len() && chars[i] != '}' {
                    i += 1;
                }
                i += 1;
            } else {
                while i < chars.len() && is_ident(chars[i]) {
                    i += 1;
                }
            }
        } else if c == '{' {
            // The matchers of a selector: the label names before `=`, `!=`, `=~`, `!~`.
            let mut labels = Vec::new();
            i += 1;
            while i < chars.len() && chars[i] != '}' {
                if chars[i] == '"' || chars[i] == '\'' || chars[i] == '`' {
                    skip_string(&mut i);
                } else if is_ident_start(chars[i]) {
                    let start = i;
                    while i < chars.len() && is_ident(chars[i]) {
                        i += 1;
                    }
                    labels.push(chars[start..i].iter().collect());
                } else {
                    i += 1;
                }
            }
            i += 1;
            match query.selectors.last_mut() {
                Some((_, matchers)) if matchers.is_empty() => *matchers = labels,
                _ => panic!("a selector without a metric name, or matchers twice, in {expr:?}"),
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // A number or a duration (`0.05`, `1e3`, `5m`, `0x1f`).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if is_ident_start(c) {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let after = next_non_space(i);
            let opens = chars.get(after) == Some(&'(');
            let grouping = [
                "by",
                "without",
                "on",
                "ignoring",
                "group_left",
                "group_right",
            ];
            if grouping.contains(&word.as_str()) {
                if opens {
                    let close = after + chars[after..].iter().position(|&c| c == ')').unwrap();
                    let list: String = chars[after + 1..close].iter().collect();
                    query.grouping.extend(
                        list.split(',')
                            .map(str::trim)
                            .filter(|l| !l.is_empty())
                            .map(str::to_owned),
                    );
                    i = close + 1;
                }
            } else if !opens && !KEYWORDS.contains(&word.as_str()) {
                query.selectors.push((word, Vec::new()));
            }
        } else {
            i += 1;
        }
    }
    query
}

/// The PromQL of a rules file: each `expr:` value, on its line or as a block scalar below it.
fn rule_expressions(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut exprs = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let Some(value) = trimmed.strip_prefix("expr:") else {
            continue;
        };
        let value = value.trim();
        if value.starts_with('|') || value.starts_with('>') {
            let indent = line.len() - trimmed.len();
            let block: Vec<&str> = lines[n + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
                .copied()
                .collect();
            exprs.push(block.join("\n"));
        } else {
            exprs.push(value.trim_matches(['"', '\'']).to_owned());
        }
    }
    exprs
}

/// The PromQL of a Grafana dashboard: every `expr` of its panels' targets, and the queries of
/// its query variables (`label_values(metric, label)` read as the metric, grouped by label).
fn dashboard_expressions(dashboard: &serde_json::Value) -> Vec<String> {
    fn walk(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    if key == "expr" {
                        out.push(v.as_str().expect("an expr is a string").to_owned());
                    } else {
                        walk(v, out);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut exprs = Vec::new();
    walk(dashboard, &mut exprs);
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if variable["type"] != "query" {
            continue;
        }
        let query = match &variable["query"] {
            serde_json::Value::String(q) => q.clone(),
            q => q["query"].as_str().unwrap().to_owned(),
        };
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("a variable query other than label_values: {query}"));
        let (metric, label) = inner.rsplit_once(',').expect("label_values(metric, label)");
        exprs.push(format!("sum by ({}) ({})", label.trim(), metric.trim()));
    }
    exprs
}

#[test]
fn the_promql_reader_finds_selectors_and_grouping_labels() {
    let q = parse_promql(
        r#"histogram_quantile(0.99, sum by (le, job) (rate(x_bucket{a="}", b!~"c"}[$__rate_interval])))
           / on (job) group_left sum(increase(y_total[5m] offset 1h)) > bool 0.5 or vector(0)"#,
    );
    assert_eq!(
        q,
        Query {
            selectors: vec![
                ("x_bucket".into(), vec!["a".into(), "b".into()]),
                ("y_total".into(), vec![]),
            ],
            grouping: vec!["le".into(), "job".into(), "job".into()],
        }
    );
    assert_eq!(
        rule_expressions(
            "- alert: A\n  expr: |\n    a\n    / b\n  for: 5m\n- alert: B\n  expr: c > 1\n"
        ),
        ["    a\n    / b", "c > 1"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_the_alert_rules_query_what_the_exporter_emits() {
    let registry = prometheus::Registry::new();
    let provider = example::provider(&registry);
    example::workload(&provider).await;
    the_rest_of_a_service(&provider).await;
    let body = scrape(registry).await;
    let exposition = Exposition::parse(&body);
    eprintln!("exported metric families:");
    for (family, kind) in &exposition.families {
        eprintln!("  {family} ({kind})");
    }

    let root = env!("CARGO_MANIFEST_DIR");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/deploy/grafana/ryw-dashboard.json")).unwrap(),
    )
    .unwrap();
    let rules =
        std::fs::read_to_string(format!("{root}/deploy/prometheus/ryw-alerts.yml")).unwrap();
    let sources = [
        (
            "deploy/grafana/ryw-dashboard.json",
            dashboard_expressions(&dashboard),
        ),
        ("deploy/prometheus/ryw-alerts.yml", rule_expressions(&rules)),
    ];

    // Labels Prometheus adds to every scraped series.
    let target_labels = ["job", "instance"];
    let mut problems = Vec::new();
    let mut queried = BTreeSet::new();
    for (file, exprs) in &sources {
        assert!(
            exprs.len() >= 5,
            "{file}: only {} queries found",
            exprs.len()
        );
        for expr in exprs {
            let query = parse_promql(expr);
            let expr = expr.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(!query.selectors.is_empty(), "{file}: no metric in {expr}");
            let mut in_scope: BTreeSet<String> =
                target_labels.iter().map(|l| l.to_string()).collect();
            for (metric, matchers) in &query.selectors {
                let Some(labels) = exposition.labels(metric) else {
                    problems.push(format!("{file}: `{metric}` is not exported, in {expr}"));
                    continue;
                };
                queried.insert(exposition.family(metric).to_owned());
                for label in matchers {
                    if !labels.contains(label) && !target_labels.contains(&label.as_str()) {
                        problems.push(format!(
                            "{file}: `{metric}` has no label `{label}` (it has {labels:?}), in {expr}"
                        ));
                    }
                }
                in_scope.extend(labels);
            }
            for label in &query.grouping {
                if !in_scope.contains(label) {
                    problems.push(format!(
                        "{file}: no metric of the query has label `{label}`, in {expr}"
                    ));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{}\n\nthe scrape:\n{body}",
        problems.join("\n")
    );
    eprintln!("queried: {queried:?}");

    // The dashboard's queries are valid PromQL: promtool checks them as recording rules, with
    // Grafana's variables given values. (tests/run-all.sh installs promtool and sets
    // RYW_PROMTOOL; without it this part is skipped. The alert rules have their own promtool
    // checks there.)
    let Ok(promtool) = std::env::var("RYW_PROMTOOL") else {
        eprintln!("RYW_PROMTOOL is not set: the dashboard's PromQL is not checked by promtool");
        return;
    };
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (n, expr) in dashboard_expressions(&dashboard).iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$__range", "1h")
            .replace("$job", ".*")
            .replace("$store", ".*");
        assert!(
            !expr.contains('$'),
            "a variable this test does not know: {expr}"
        );
        rules += &format!("      - record: dashboard:query{n}\n        expr: {expr:?}\n");
    }
    let path = std::env::temp_dir().join(format!("ryw-dashboard-rules-{}.yml", std::process::id()));
    std::fs::write(&path, &rules).unwrap();
    let out = std::process::Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(
        out.status.success(),
        "promtool refused the dashboard's queries:\n{}{}\n{rules}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
