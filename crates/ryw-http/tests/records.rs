//! Sessions' records over HTTP: a session of 200 items travels between two instances only as its
//! token. With `SessionRecordsLayer` (a record store the instances share), reads of items that
//! fell out of the token are fenced on their exact entries and verified on the cheap path; with
//! the token alone, every such read goes to the strong path (the store's horizon).

use http::{Request, Response};
use ryw::record::{InMemoryRecordStore, SessionRecords};
use ryw::signing::{SigningKey, TokenAuthority};
use ryw::{ReadYourWritesLayer, Session, Visibility};
use ryw_http::{ServerSessionLayer, SessionRecordsLayer, DEFAULT_HEADER};
use ryw_sim::{SimAdapter, SimConfig, SimRequest, SimStore};
use std::convert::Infallible;
use std::sync::Arc;
use tower::util::BoxCloneService;
use tower::{service_fn, Layer, Service, ServiceBuilder, ServiceExt};

type App = BoxCloneService<Request<String>, Response<String>, Infallible>;

/// One instance: `PUT /k` writes key `k`, `GET /k` reads it; the body says the read's path.
fn instance(
    store: &SimStore,
    replica: usize,
    authority: Arc<TokenAuthority>,
    records: Option<Arc<SessionRecords>>,
) -> App {
    let ryw = ReadYourWritesLayer::new(SimAdapter::new())
        .clock(store.clock())
        .layer(store.client(replica));
    let handler = service_fn(move |request: Request<String>| {
        let ryw = ryw.clone();
        async move {
            let session = request.extensions().get::<Session>().unwrap().clone();
            let key = request.uri().path().trim_start_matches('/').to_owned();
            let op = if request.method() == http::Method::PUT {
                SimRequest::put(key.as_str(), 1)
            } else {
                SimRequest::get(key.as_str())
            };
            let answer = ryw.oneshot(session.request(op)).await.unwrap();
            let body = match answer.visibility() {
                Visibility::Guaranteed(path) => path.as_str().to_owned(),
                other => format!("{other:?}"),
            };
            Ok::<_, Infallible>(Response::new(body))
        }
    });
    let server = ServerSessionLayer::new(authority);
    match records {
        Some(r) => BoxCloneService::new(
            ServiceBuilder::new()
                .layer(server)
                .layer(SessionRecordsLayer::new(r))
                .service(handler),
        ),
        None => BoxCloneService::new(server.layer(handler)),
    }
}

async fn send(
    app: &mut App,
    method: http::Method,
    key: &str,
    token: &mut Option<String>,
) -> String {
    let mut request = Request::builder()
        .method(method)
        .uri(format!("/{key}"))
        .body(String::new())
        .unwrap();
    if let Some(t) = token.as_deref() {
        request
            .headers_mut()
            .insert(DEFAULT_HEADER, t.parse().unwrap());
    }
    let response = app.ready().await.unwrap().call(request).await.unwrap();
    if let Some(t) = response.headers().get(DEFAULT_HEADER) {
        *token = Some(t.to_str().unwrap().to_owned());
    }
    response.into_body()
}

/// Writes 200 items alternating between the instances, then reads the first 20 on each: the
/// paths of those reads, and the record stats.
async fn run(with_records: bool) -> (Vec<String>, Option<ryw::record::RecordStats>) {
    let store = SimStore::new(SimConfig::default().seed(3).replicas(2));
    let authority = || Arc::new(TokenAuthority::new(SigningKey::new(1, [9u8; 32]).unwrap()));
    let shared = Arc::new(InMemoryRecordStore::new());
    let records = [
        Arc::new(SessionRecords::new(shared.clone())),
        Arc::new(SessionRecords::new(shared)),
    ];
    let mut apps = [0, 1].map(|i| {
        instance(
            &store,
            i,
            authority(),
            with_records.then(|| records[i].clone()),
        )
    });
    let mut token = None;
    for n in 0..200 {
        let body = send(
            &mut apps[n % 2],
            http::Method::PUT,
            &format!("item{n}"),
            &mut token,
        )
        .await;
        assert_eq!(body, "write");
    }
    // Let the replicas catch up: a verified read of a current replica stays cheap.
    store.quiesce().await;
    let mut paths = Vec::new();
    for n in 0..20 {
        paths.push(
            send(
                &mut apps[n % 2],
                http::Method::GET,
                &format!("item{n}"),
                &mut token,
            )
            .await,
        );
    }
    let stats = with_records.then(|| {
        let (a, b) = (records[0].stats(), records[1].stats());
        let mut sum = a;
        sum.loads += b.loads;
        sum.writes += b.writes;
        sum.cache_hits += b.cache_hits;
        sum.failures += b.failures;
        sum.untrusted += b.untrusted;
        sum
    });
    (paths, stats)
}

#[tokio::test(start_paused = true)]
async fn a_session_past_its_cap_reads_cheaply_on_every_instance_with_its_record() {
    let (paths, stats) = run(true).await;
    assert!(paths.iter().all(|p| p == "verified"), "{paths:?}");
    let stats = stats.unwrap();
    assert!(stats.writes > 0 && stats.loads > 0, "{stats:?}");
    assert_eq!((stats.failures, stats.untrusted), (0, 0), "{stats:?}");

    let (paths, _) = run(false).await;
    assert!(paths.iter().all(|p| p == "escalated"), "{paths:?}");
}
