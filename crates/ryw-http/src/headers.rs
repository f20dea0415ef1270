//! The headers the layers read and write: their names, the token list of a request, and the
//! visibility status as a header value.

/// The header a token travels in unless configured otherwise: `ryw-session`.
///
/// A request may carry several tokens of one client (from concurrent responses), as repeated
/// headers or comma-separated (base64url has no commas).
pub const DEFAULT_HEADER: &str = "ryw-session";

/// The response header that says a bad token was replaced by a fresh session
/// ([`BadTokenPolicy::StartFresh`](crate::BadTokenPolicy::StartFresh)); its value is the error code
/// ([`VerifyError::code`](ryw::signing::VerifyError::code)), such as `token_expired`.
pub const RESET_HEADER: &str = "ryw-session-reset";

/// The response header on a rejected request ([`BadTokenPolicy::Reject`](crate::BadTokenPolicy::Reject)), and on a served one
/// whose session could not be carried in a token any more (`token_oversized`: the session ends);
/// its value is the error code. [`ClientSessionLayer`](crate::ClientSessionLayer) drops the tokens it holds when it sees it,
/// so the next request starts a new session.
pub const REJECTED_HEADER: &str = "ryw-session-rejected";

/// The response header that tells the client whether what it read reflects its session's
/// writes, so that a UI can say "saving…" until its write is visible:
///
/// - `guaranteed` (with the fence path: `guaranteed; path=escalated`);
/// - `pending; behind=N; required=R; observed=O`: the data may lack the session's writes (a later
///   read converges); `N = R - O` in the store's own version units: writes to the item for a
///   DynamoDB item, microseconds of write time for ScyllaDB and a DynamoDB partition, packed
///   cluster time (`seconds << 32 + increment`) for MongoDB. Compare it only within one store;
///   to tell whether a read is behind, read the status, not the number;
/// - `unscoped`: nothing could be fenced (a configuration gap);
/// - `queued; write=S`: the session's write number `S` waits in an outbox (`ryw-outbox`, the
///   store was down): a read cannot show it yet, and a write answered so is kept, not applied.
///   Answer a deferred write with `202 Accepted` and this header (put
///   `ryw_outbox::Deferred::visibility()` into the response extensions), so the client knows it
///   is queued.
///
/// The handler puts the read's [`ryw::Visibility`] into the response extensions (with axum,
/// return `Extension(visibility)` among the response parts); [`ServerSessionLayer`](crate::ServerSessionLayer) turns it into
/// this header. With the `axum` feature, `ryw_http::axum::VisibilityHeader::from(&read)` among the
/// response parts writes the header itself. [`visibility_header`] gives the value for other stacks.
pub const VISIBILITY_HEADER: &str = "ryw-visibility";

/// The value of [`VISIBILITY_HEADER`] for `visibility`.
///
/// ```
/// use ryw::fence::FencePath;
/// use ryw::Visibility;
///
/// let v = ryw_http::visibility_header(&Visibility::Guaranteed(FencePath::Escalated));
/// assert_eq!(v, "guaranteed; path=escalated");
/// ```
pub fn visibility_header(visibility: &ryw::Visibility) -> http::HeaderValue {
    let text = match visibility {
        ryw::Visibility::Guaranteed(path) => format!("guaranteed; path={}", path.as_str()),
        ryw::Visibility::Pending(stale) => {
            let s = &stale.staleness;
            let observed = s.observed.map_or(0, |v| v.get());
            format!(
                "pending; behind={}; required={}; observed={observed}",
                s.required.get().saturating_sub(observed),
                s.required.get(),
            )
        }
        ryw::Visibility::Queued(write_id) => format!("queued; write={}", write_id.seq),
        ryw::Visibility::SessionOnly(path) => format!("session-only; path={}", path.as_str()),
        _ => "unscoped".to_owned(),
    };
    // Only ASCII letters, digits and punctuation: always a valid header value.
    http::HeaderValue::from_str(&text).unwrap_or(http::HeaderValue::from_static("unscoped"))
}

/// The most tokens one request may carry, and a [`ClientSessionLayer`](crate::ClientSessionLayer)
/// keeps: the answers to concurrent requests of one session that no other answer covers (one per
/// instance serving them at once, at most). About 1.3 KB of header for 4-scope tokens, 8 KiB at
/// most. A client with more than this many such answers drops the oldest, and loses its fence.
pub const MAX_TOKENS_PER_REQUEST: usize = 8;

/// Splits the values of a token header into tokens: repeated headers and comma-separated values.
/// A value that is not visible ASCII yields one `Err(())`.
pub(crate) fn tokens_in<'a>(
    values: impl Iterator<Item = &'a http::HeaderValue> + 'a,
) -> impl Iterator<Item = Result<&'a str, ()>> + 'a {
    values.flat_map(|v| {
        let (text, not_text) = match v.to_str() {
            Ok(text) => (text, None),
            Err(_) => ("", Some(Err(()))),
        };
        not_text.into_iter().chain(
            text.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(Ok),
        )
    })
}

#[cfg(test)]
mod tests {
    use ryw::fence::{FencePath, FenceStrategy, StaleRead, Staleness};
    use ryw::version::{ScopeKey, StoreId, Version};
    use ryw::Visibility;

    #[test]
    fn a_pending_read_says_how_far_behind_it_is() {
        let stale = StaleRead {
            staleness: Staleness {
                scope: ScopeKey::new(StoreId::new(1), b"k"),
                required: Version::new(12),
                observed: Some(Version::new(9)),
                horizon: false,
            },
            attempts: 2,
            last_strategy: FenceStrategy::Strong,
        };
        assert_eq!(
            super::visibility_header(&Visibility::Pending(Box::new(stale))),
            "pending; behind=3; required=12; observed=9"
        );
        assert_eq!(super::visibility_header(&Visibility::Unscoped), "unscoped");
        let write = ryw::WriteId::new(ryw::SessionId::from_u128(1), 2, 7);
        assert_eq!(
            super::visibility_header(&Visibility::Queued(write)),
            "queued; write=7"
        );
        assert_eq!(
            super::visibility_header(&Visibility::Guaranteed(FencePath::Verified)),
            "guaranteed; path=verified"
        );
    }
}
