//! Expression and key helpers: merging ryw's condition and SET clause into the caller's
//! expressions, canonical key bytes, and the partition key of a query's key condition.

use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::HashMap;

pub(crate) type Item = HashMap<String, AttributeValue>;

/// Placeholders ryw adds to expressions; callers must not use names starting with `ryw_`.
pub(crate) const NAME_VERSION: &str = "#ryw_v";
pub(crate) const NAME_WRITE: &str = "#ryw_w";
pub(crate) const NAME_CLOCK: &str = "#ryw_c";
pub(crate) const NAME_KEY: &str = "#ryw_k";
pub(crate) const VALUE_EXPECTED: &str = ":ryw_expected";
pub(crate) const VALUE_NEXT: &str = ":ryw_next";
pub(crate) const VALUE_WRITE: &str = ":ryw_wid";
pub(crate) const VALUE_CLOCK: &str = ":ryw_clock";

/// `condition AND extra`, keeping the caller's condition intact.
pub(crate) fn and_condition(condition: Option<String>, extra: &str) -> String {
    match condition {
        Some(c) if !c.trim().is_empty() => format!("({c}) AND ({extra})"),
        _ => extra.to_owned(),
    }
}

/// The optimistic-concurrency condition on the version attribute.
pub(crate) fn version_condition(expected: u64) -> &'static str {
    if expected == 0 {
        "attribute_not_exists(#ryw_v)"
    } else {
        "#ryw_v = :ryw_expected"
    }
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'#' || b == b':' || b == b'.'
}

/// Position of the clause keyword `word` (case-insensitive, as a whole word) in `expr`.
fn find_keyword(expr: &str, word: &str) -> Option<usize> {
    let bytes = expr.as_bytes();
    let n = word.len();
    (0..bytes.len().saturating_sub(n - 1)).find(|&i| {
        bytes[i..i + n].eq_ignore_ascii_case(word.as_bytes())
            && (i == 0 || !is_ident(bytes[i - 1]))
            && (i + n == bytes.len() || !is_ident(bytes[i + n]))
    })
}

/// Adds `assignments` to the SET clause of an update expression (creating the clause if absent).
pub(crate) fn add_set_assignments(update: Option<String>, assignments: &str) -> String {
    match update {
        Some(u) if !u.trim().is_empty() => match find_keyword(&u, "SET") {
            Some(i) => format!("{} {assignments},{}", &u[..i + 3], &u[i + 3..]),
            None => format!("{u} SET {assignments}"),
        },
        _ => format!("SET {assignments}"),
    }
}

/// Merges ryw's placeholders into the caller's attribute names.
pub(crate) fn with_names(
    names: Option<HashMap<String, String>>,
    config: &crate::request::DynamoConfig,
) -> HashMap<String, String> {
    let mut names = names.unwrap_or_default();
    names.insert(NAME_VERSION.into(), config.version_attribute.clone());
    names.insert(NAME_WRITE.into(), config.write_id_attribute.clone());
    names.insert(NAME_CLOCK.into(), config.clock_attribute.clone());
    names
}

/// Drops ryw's name placeholders that `expressions` do not use (DynamoDB rejects unused ones).
pub(crate) fn prune_names(names: &mut HashMap<String, String>, expressions: &[Option<&str>]) {
    for key in [NAME_VERSION, NAME_WRITE, NAME_CLOCK, NAME_KEY] {
        if !expressions.iter().flatten().any(|e| e.contains(key)) {
            names.remove(key);
        }
    }
}

/// Canonical bytes of a key: table, index, then each attribute in name order.
/// A DynamoDB number in one spelling per value (`1`, `1.0`, `+1` and `10e-1` are one key at
/// DynamoDB): sign, significant digits without leading or trailing zeros, and a power of ten.
/// `None` for text that is not a number.
pub(crate) fn canonical_number(n: &str) -> Option<String> {
    let s = n.trim();
    let (negative, rest) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], rest[i + 1..].parse::<i64>().ok()?),
        None => (rest, 0),
    };
    let (int, frac) = match mantissa.find('.') {
        Some(i) => (&mantissa[..i], &mantissa[i + 1..]),
        None => (mantissa, ""),
    };
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let digits: String = int.chars().chain(frac.chars()).collect();
    let significant = digits.trim_start_matches('0');
    if significant.is_empty() {
        return Some("0".into());
    }
    let trimmed = significant.trim_end_matches('0');
    let zeros = (significant.len() - trimmed.len()) as i64;
    let power = exponent
        .checked_sub(frac.len() as i64)?
        .checked_add(zeros)?;
    let sign = if negative { "-" } else { "" };
    Some(format!("{sign}{trimmed}e{power}"))
}

pub(crate) fn key_bytes(
    kind: u8,
    table: &str,
    index: &str,
    attrs: &mut [(&str, &AttributeValue)],
) -> Vec<u8> {
    attrs.sort_by_key(|(name, _)| *name);
    let mut out = Vec::with_capacity(64);
    out.push(kind);
    out.extend_from_slice(table.as_bytes());
    out.push(0);
    out.extend_from_slice(index.as_bytes());
    out.push(0);
    for (name, value) in attrs.iter() {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        match value {
            AttributeValue::S(s) => {
                out.push(b'S');
                out.extend_from_slice(s.as_bytes());
            }
            AttributeValue::N(n) => {
                out.push(b'N');
                match canonical_number(n) {
                    Some(canonical) => out.extend_from_slice(canonical.as_bytes()),
                    None => out.extend_from_slice(n.trim().as_bytes()),
                }
            }
            AttributeValue::B(b) => {
                out.push(b'B');
                out.extend_from_slice(b.as_ref());
            }
            other => {
                out.push(b'?');
                out.extend_from_slice(format!("{other:?}").as_bytes());
            }
        }
        out.push(0);
    }
    out
}

/// The value compared for equality with `attribute` in a key condition expression
/// (`#pk = :v`, `pk = :v`, `:v = #pk`, with or without parentheses), if any.
pub(crate) fn key_condition_value<'a>(
    expression: &str,
    names: Option<&HashMap<String, String>>,
    values: Option<&'a HashMap<String, AttributeValue>>,
    attribute: &str,
) -> Option<&'a AttributeValue> {
    let values = values?;
    let resolve = |token: &str| -> Option<String> {
        let token = token.trim().trim_matches(|c| c == '(' || c == ')').trim();
        if token.starts_with('#') {
            names.and_then(|n| n.get(token)).cloned()
        } else {
            Some(token.to_owned())
        }
    };
    let mut rest = expression;
    loop {
        let (clause, next) = match find_keyword(rest, "AND") {
            Some(i) => (&rest[..i], Some(&rest[i + 3..])),
            None => (rest, None),
        };
        if let Some((lhs, rhs)) = clause.split_once('=') {
            let (lhs, rhs) = (lhs.trim(), rhs.trim());
            let lhs_t = lhs.trim_matches(|c| c == '(' || c == ')').trim();
            let rhs_t = rhs.trim_matches(|c| c == '(' || c == ')').trim();
            if !lhs.ends_with(['<', '>', '!']) {
                if rhs_t.starts_with(':') && resolve(lhs_t).as_deref() == Some(attribute) {
                    return values.get(rhs_t);
                }
                if lhs_t.starts_with(':') && resolve(rhs_t).as_deref() == Some(attribute) {
                    return values.get(lhs_t);
                }
            }
        }
        rest = next?;
    }
}

/// The values the SET clause of an update expression assigns outright (`attr = :v`, the
/// attribute by name or through a `#name`): what those attributes hold after the update. Nested
/// paths, functions (`if_not_exists`, `list_append`) and arithmetic are not read.
pub(crate) fn set_values<'a>(
    expression: &str,
    names: Option<&HashMap<String, String>>,
    values: Option<&'a HashMap<String, AttributeValue>>,
) -> Vec<(String, &'a AttributeValue)> {
    let (Some(values), Some(start)) = (values, find_keyword(expression, "SET")) else {
        return Vec::new();
    };
    let body = &expression[start + 3..];
    let end = ["REMOVE", "ADD", "DELETE"]
        .iter()
        .filter_map(|k| find_keyword(body, k))
        .min()
        .unwrap_or(body.len());
    let body = &body[..end];
    let mut parts = Vec::new();
    let (mut depth, mut from) = (0i32, 0);
    for (i, c) in body.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&body[from..i]);
                from = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&body[from..]);
    let plain = |t: &str| {
        t.len() > 1
            && t[1..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    parts
        .into_iter()
        .filter_map(|part| {
            let (lhs, rhs) = part.split_once('=')?;
            let (lhs, rhs) = (lhs.trim(), rhs.trim());
            if !rhs.starts_with(':') || !plain(rhs) {
                return None;
            }
            let attr = if lhs.starts_with('#') {
                names?.get(lhs)?.clone()
            } else {
                lhs.to_owned()
            };
            Some((attr, values.get(rhs)?))
        })
        .collect()
}

/// A number attribute as `u64`.
pub(crate) fn number(item: &Item, attribute: &str) -> Option<u64> {
    match item.get(attribute)? {
        AttributeValue::N(n) => n.trim().parse().ok(),
        _ => None,
    }
}

/// A string attribute.
pub(crate) fn string<'a>(item: &'a Item, attribute: &str) -> Option<&'a str> {
    match item.get(attribute)? {
        AttributeValue::S(s) => Some(s),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_values_reads_outright_assignments_of_the_set_clause() {
        let v = |x: &str| AttributeValue::S(x.into());
        let values: HashMap<String, AttributeValue> =
            [(":a", v("ada")), (":b", v("hi")), (":n", v("1"))]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
        let names: HashMap<String, String> = [("#a".to_owned(), "author".to_owned())].into();
        let got = |e: &str| -> Vec<(String, String)> {
            set_values(e, Some(&names), Some(&values))
                .into_iter()
                .map(|(k, v)| (k, v.as_s().unwrap().clone()))
                .collect()
        };
        let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        assert_eq!(got("SET author = :a"), [pair("author", "ada")]);
        assert_eq!(
            got("set body=:b, #a = :a REMOVE old"),
            [pair("body", "hi"), pair("author", "ada")]
        );
        assert_eq!(
            got("REMOVE x SET #a = :a ADD n :n"),
            [pair("author", "ada")]
        );
        // Not outright: a function, arithmetic, a nested path's value is still read by name.
        assert!(got("SET author = if_not_exists(author, :a)").is_empty());
        assert!(got("SET n = n + :n, l = list_append(l, :b)").is_empty());
        assert!(got("REMOVE author").is_empty());
        assert!(got("SET #unknown = :a, x = :missing").is_empty());
    }

    #[test]
    fn set_clause_is_extended_not_duplicated() {
        assert_eq!(add_set_assignments(None, "a = :a"), "SET a = :a");
        assert_eq!(
            add_set_assignments(Some("SET #n = :n REMOVE old".into()), "a = :a"),
            "SET a = :a, #n = :n REMOVE old"
        );
        assert_eq!(
            add_set_assignments(Some("REMOVE old, #settings".into()), "a = :a"),
            "REMOVE old, #settings SET a = :a"
        );
        assert_eq!(
            add_set_assignments(Some("add cnt :one set x = :x".into()), "a = :a"),
            "add cnt :one set a = :a, x = :x"
        );
    }

    #[test]
    fn conditions_combine() {
        assert_eq!(and_condition(None, "x"), "x");
        assert_eq!(
            and_condition(Some("a = :a OR b = :b".into()), "x"),
            "(a = :a OR b = :b) AND (x)"
        );
    }

    #[test]
    fn partition_value_from_key_condition() {
        let names: HashMap<String, String> = [("#p".to_owned(), "pk".to_owned())].into();
        let values: HashMap<String, AttributeValue> = [
            (":v".to_owned(), AttributeValue::S("user#1".into())),
            (":s".to_owned(), AttributeValue::S("2024".into())),
        ]
        .into();
        for expr in [
            "#p = :v",
            "#p = :v AND begins_with(sk, :s)",
            "sk >= :s and (#p = :v)",
            ":v = #p",
            "pk = :v",
        ] {
            assert_eq!(
                key_condition_value(expr, Some(&names), Some(&values), "pk"),
                Some(&AttributeValue::S("user#1".into())),
                "{expr}"
            );
        }
        assert_eq!(
            key_condition_value("sk <= :s", Some(&names), Some(&values), "pk"),
            None
        );
        assert_eq!(
            key_condition_value("#x = :v", Some(&names), Some(&values), "pk"),
            None
        );
    }

    #[test]
    fn a_number_has_one_spelling() {
        for same in ["1", "1.0", "+1", "01", "10e-1", "0.1E1", " 1 ", "1.000"] {
            assert_eq!(canonical_number(same).as_deref(), Some("1e0"), "{same}");
        }
        assert_eq!(canonical_number("-2.50").as_deref(), Some("-25e-1"));
        assert_eq!(canonical_number("1200").as_deref(), Some("12e2"));
        assert_eq!(canonical_number("0.000").as_deref(), Some("0"));
        assert_eq!(canonical_number("-0").as_deref(), Some("0"));
        for not in ["", "-", ".", "1e", "abc", "1.2.3", "1e99999999999999999999"] {
            assert_eq!(canonical_number(not), None, "{not}");
        }
        let one = AttributeValue::N("1".into());
        let other = AttributeValue::N("1.0".into());
        assert_eq!(
            key_bytes(1, "t", "", &mut [("pk", &one)]),
            key_bytes(1, "t", "", &mut [("pk", &other)])
        );
        assert_ne!(
            key_bytes(1, "t", "", &mut [("pk", &one)]),
            key_bytes(1, "t", "", &mut [("pk", &AttributeValue::N("10".into()))])
        );
    }

    #[test]
    fn key_bytes_ignore_attribute_order() {
        let a = AttributeValue::S("a".into());
        let b = AttributeValue::N("1".into());
        assert_eq!(
            key_bytes(1, "t", "", &mut [("pk", &a), ("sk", &b)]),
            key_bytes(1, "t", "", &mut [("sk", &b), ("pk", &a)])
        );
        assert_ne!(
            key_bytes(1, "t", "", &mut [("pk", &a)]),
            key_bytes(1, "u", "", &mut [("pk", &a)])
        );
    }
}
