//! What the layer is configured with, and the token exchange it runs on every request: the
//! session opened from the request's tokens, and the token the response answers with.

use super::rejection::{BadTokenPolicy, TokenRejection};
use super::transport::Transport;
use crate::headers::{visibility_header, REJECTED_HEADER, RESET_HEADER, VISIBILITY_HEADER};
use crate::principal::Principal;
use http::header::HeaderValue;
use http::{HeaderMap, Response};
use ryw::signing::{now_secs, TokenAuthority, VerifyError};
use ryw::telemetry::{Observer, TokenEvent};
use ryw::{Session, SessionState, SessionStore, SessionToken};
use std::sync::Arc;
use std::time::Duration;

/// How the request's session came about; in the request extensions beside the
/// [`Session`] (see the [crate docs](crate)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenStatus {
    /// The request carried no token: a new session.
    New,
    /// The request's token (or tokens) verified: the session continues.
    Continued,
    /// The tokens verified, but their state moved to a new session id: an anonymous session met
    /// an authenticated principal (session fixation defence), or the request carried tokens of
    /// several sessions (one request continues at most one session id). Fences are kept; the
    /// old ids are not continued.
    Cycled,
    /// The token was bad and [`BadTokenPolicy::StartFresh`] replaced it by a new session.
    Reset {
        /// Why, as in [`TokenRejection::code`].
        code: &'static str,
    },
}

/// The configuration a layer shares with its services.
#[derive(Clone)]
pub(super) struct Config {
    pub(super) authority: Arc<TokenAuthority>,
    pub(super) transport: Transport,
    pub(super) policy: BadTokenPolicy,
    pub(super) store: Option<Arc<dyn SessionStore>>,
    /// `None`: half the authority's TTL.
    pub(super) renew_after: Option<Duration>,
    /// Hears of every token received, issued or refused.
    pub(super) observer: Option<Arc<dyn Observer>>,
}

/// The one token a continued session came with, kept to answer with it again when the request
/// leaves the session as it found it.
pub(super) struct Presented {
    /// The token as a header value (the request's own, shared, when it came alone in the header).
    value: HeaderValue,
    /// The verified token, shared with the authority's cache.
    token: Arc<SessionToken>,
    from_cookie: bool,
    /// When the request was opened (seconds since the Unix epoch): one clock read per request.
    now: u64,
    /// The authority's key ring generation, read before the token was verified.
    ring: u64,
}

/// What a response's token is.
enum Answer {
    /// The token the request came with.
    Echo(Presented),
    /// A new token, for this state.
    Sign(SessionState),
}

/// A session opened from a request: the session, how it came about, and the token to answer with
/// if nothing changes.
pub(super) type Opened = (Session, TokenStatus, Option<Presented>);

impl Config {
    /// The session of a request with `headers`, sent by `principal` if authenticated, or why its
    /// tokens are refused.
    pub(super) fn open(
        &self,
        headers: &HeaderMap,
        principal: Option<&Principal>,
    ) -> Result<Opened, TokenRejection> {
        let now = now_secs();
        let ring = self.authority.key_ring_generation();
        let carried = self.transport.read(headers)?;
        let tokens = carried.tokens();
        let from_cookie = carried.from_cookie;
        let authenticated = principal.is_some();
        let principal = principal.map(Principal::as_bytes);
        if let [text] = tokens {
            // The common case: one token.
            let token = self
                .authority
                .verify_shared_at(text, principal, now)
                .map_err(TokenRejection::Invalid)?;
            self.report(TokenEvent::Received { bytes: text.len() });
            if authenticated && token.binding().is_none() {
                let state = token.state().clone();
                return Ok((self.cycle(&[state]), TokenStatus::Cycled, None));
            }
            // Only a signed token with times can answer again (every token an authority issues).
            let presented = match (token.times(), token.signature()) {
                (Some(_), Some(_)) => {
                    let value = self.transport.answer_value(headers, text, from_cookie);
                    value.map(|value| Presented {
                        value,
                        token: token.clone(),
                        from_cookie,
                        now,
                        ring,
                    })
                }
                _ => None,
            };
            let mut state = token.state().clone();
            if let Some(store) = &self.store {
                store.sync(&mut state);
            }
            return Ok((
                Session::from_state(state),
                TokenStatus::Continued,
                presented,
            ));
        }
        if tokens.is_empty() {
            return Ok((Session::new(), TokenStatus::New, None));
        }
        let mut states = Vec::with_capacity(tokens.len());
        let mut unbound = false;
        for text in tokens {
            let token = self
                .authority
                .verify_at(text, principal, now)
                .map_err(TokenRejection::Invalid)?;
            self.report(TokenEvent::Received { bytes: text.len() });
            unbound |= token.binding().is_none();
            states.push(token.into_state());
        }
        let one_id = states.iter().all(|s| s.id() == states[0].id());
        // Fixation: an anonymous session that meets an authenticated principal is never continued
        // under its old id (which its creator, or whoever planted it, also holds): its state moves
        // to a new session id, as Rails' `reset_session` or Django's `cycle_key` do on login. And
        // one request continues at most one session id: tokens of several sessions move to a new
        // one too.
        if !one_id || (authenticated && unbound) {
            return Ok((self.cycle(&states), TokenStatus::Cycled, None));
        }
        let mut states = states.into_iter();
        let mut state = states.next().expect("at least two tokens");
        for other in states {
            state.merge(&other);
        }
        if let Some(store) = &self.store {
            store.sync(&mut state);
        }
        Ok((Session::from_state(state), TokenStatus::Continued, None))
    }

    /// A new session id that takes in `states` and what this instance holds of them. The new
    /// session is as old as the oldest it absorbs (`SessionState::absorb`), so an epoch
    /// revocation that covers any of them covers it too.
    fn cycle(&self, states: &[SessionState]) -> Session {
        let session = Session::new();
        for state in states {
            session.absorb(state);
            if let Some(seen) = self.store.as_ref().and_then(|s| s.load(state.id())) {
                session.absorb(&seen);
            }
        }
        session
    }

    /// Whether the token a request came with can answer it again: the session is exactly what the
    /// token says, the token is signed with the current key of a ring that has not changed since
    /// it was verified, it has not expired, and it is younger than the renewal age (sliding expiry
    /// renews it past that; the age is capped at the TTL, and zero never echoes).
    fn still_good(&self, presented: &Presented, state: &SessionState) -> bool {
        let ttl = self.authority.ttl();
        let renew_after = self.renew_after.unwrap_or(ttl / 2).min(ttl).as_secs();
        // A token from an instance whose clock is ahead has age 0.
        let (Some((issued_at, expires_at)), Some(signature)) =
            (presented.token.times(), presented.token.signature())
        else {
            return false;
        };
        let age = presented.now.saturating_sub(issued_at);
        renew_after > 0
            && age < renew_after
            && presented.now < expires_at
            && presented.token.state() == state
            // A version 1 token carries no session start; re-issuing it records one.
            && state.started_at() != 0
            && signature.key_id == self.authority.current_key_id()
            && presented.ring == self.authority.key_ring_generation()
    }

    /// Puts on `response` the token that carries `session` on (for `principal`, opened with
    /// `status`): the one it came with when that still says it all, else a new one.
    pub(super) fn finish<B>(
        &self,
        session: &Session,
        principal: Option<&Principal>,
        status: &TokenStatus,
        presented: Option<Presented>,
        response: &mut Response<B>,
    ) {
        // What a concurrent request of the session left here since this one started comes in,
        // and what this one did is kept; then either the token it came with still says it all,
        // or the state is copied out to be signed.
        let outcome = session.with_state(|state| {
            if let Some(store) = &self.store {
                store.sync(state);
            }
            match presented {
                Some(p) if self.still_good(&p, state) => Answer::Echo(p),
                _ => Answer::Sign(state.clone()),
            }
        });
        let visibility = response
            .extensions()
            .get::<ryw::Visibility>()
            .map(visibility_header);
        let headers = response.headers_mut();
        if let Some(v) = visibility {
            headers.insert(VISIBILITY_HEADER, v);
        }
        if let TokenStatus::Reset { code } = status {
            headers.insert(RESET_HEADER, HeaderValue::from_static(code));
        }
        let state = match outcome {
            Answer::Echo(presented) => {
                // Nothing to re-sign: the client's token still says everything. It goes back in
                // the header, as every response's token does; a cookie it came in stays as it is.
                if !presented.from_cookie {
                    if let Ok(text) = presented.value.to_str() {
                        let expires_at = presented.token.times().map_or(0, |(_, e)| e);
                        let left = expires_at.saturating_sub(presented.now);
                        self.transport.set_cookie(headers, text, left);
                    }
                }
                self.transport.set_header(headers, presented.value);
                return;
            }
            Answer::Sign(state) => state,
        };
        match self
            .authority
            .issue(&state, principal.map(Principal::as_bytes))
        {
            Ok(token) => {
                self.report(TokenEvent::Issued { bytes: token.len() });
                self.transport
                    .set_cookie(headers, &token, self.authority.ttl().as_secs());
                if let Ok(v) = HeaderValue::from_str(&token) {
                    self.transport.set_header(headers, v);
                }
            }
            Err(e) => {
                // The session cannot be carried (more stores' horizons than a token holds): it
                // ends here, visibly. Answering without a token would leave the client on its old
                // one, which lacks what this request did.
                let code = VerifyError::Decode(e.clone()).code();
                tracing::error!(target: "ryw::http", error = %e, "could not issue a session token; the session ends");
                headers.insert(REJECTED_HEADER, HeaderValue::from_static(code));
                self.transport.set_cookie(headers, "", 0);
            }
        }
    }

    /// Tells the observer, if there is one.
    #[inline]
    pub(super) fn report(&self, event: TokenEvent) {
        if let Some(observer) = &self.observer {
            observer.token(&event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::layer::ServerSessionLayer;
    use super::super::testing::{
        call_with, echo_session, header_token, issued_ago, layer, maybe_write,
    };
    use crate::principal::Principal;
    use http::header::{COOKIE, SET_COOKIE};
    use http::{Request, Response};
    use ryw::signing::{SigningKey, TokenAuthority};
    use ryw::Session;
    use std::sync::Arc;
    use std::time::Duration;
    use tower::{service_fn, Layer, ServiceExt};

    #[tokio::test]
    async fn a_cycled_session_is_as_old_as_what_it_absorbed() {
        // The case: cycling gave the new session a fresh start, so an
        // epoch revocation of the session it came from no longer applied to it.
        let list = Arc::new(ryw::signing::InMemoryRevocationList::new());
        let authority = Arc::new(
            TokenAuthority::new(ryw::signing::KeyRing::new(
                SigningKey::new(1, [3u8; 32]).unwrap(),
            ))
            .revocation_list(list.clone()),
        );
        let service = ServerSessionLayer::new(authority.clone()).layer(service_fn(echo_session));
        let now = ryw::signing::now_secs();
        let anonymous = authority
            .issue_at(&Session::new().snapshot(), None, now - 1_000)
            .unwrap();
        let mut request = Request::builder()
            .header(crate::DEFAULT_HEADER, anonymous)
            .body(String::new())
            .unwrap();
        request.extensions_mut().insert(Principal::new("alice"));
        let response = service.clone().oneshot(request).await.unwrap();
        assert!(response.body().ends_with("Cycled"), "{}", response.body());
        let token = response.headers()[crate::DEFAULT_HEADER]
            .to_str()
            .unwrap()
            .to_owned();
        let cycled = authority.verify(&token, Some(b"alice")).unwrap();
        assert_eq!(cycled.state().started_at(), now - 1_000);
        list.revoke_issued_before(now - 500);
        assert!(authority
            .verify(&token, Some(b"alice"))
            .unwrap_err()
            .is_revoked());
    }

    #[tokio::test]
    async fn an_unchanged_session_gets_its_own_token_back_and_a_changed_one_a_new_token() {
        let authority = Arc::new(TokenAuthority::new(SigningKey::new(1, [3u8; 32]).unwrap()));
        let service = ServerSessionLayer::new(authority.clone()).layer(service_fn(maybe_write));
        // Issued ten seconds ago, so a re-issued token could not be the same text.
        let token = issued_ago(&authority, 10);

        // Nothing changed: the very same text comes back (no signature computed).
        let again = service
            .clone()
            .oneshot(call_with(Some(&token), "/"))
            .await
            .unwrap();
        assert_eq!(header_token(&again), token);

        // A write: a new token, which carries it.
        let wrote = service
            .clone()
            .oneshot(call_with(Some(&token), "/?advance"))
            .await
            .unwrap();
        let advanced = header_token(&wrote);
        assert_ne!(advanced, token);
        let state = authority.verify(&advanced, None).unwrap().into_state();
        assert_eq!(state.write_seq(), 1);

        // The old token again, at the same instance: the session store holds the write, so the
        // session is not what the old token says, and the answer is a new token carrying it.
        let stale = service
            .clone()
            .oneshot(call_with(Some(&token), "/"))
            .await
            .unwrap();
        let merged = header_token(&stale);
        assert_ne!(merged, token, "the old token must not come back");
        let state = authority.verify(&merged, None).unwrap().into_state();
        assert_eq!(
            state.write_seq(),
            1,
            "the write made at this instance is kept"
        );

        // Re-issuing on every response when asked to.
        let always = ServerSessionLayer::new(authority.clone())
            .renew_after(Duration::ZERO)
            .layer(service_fn(maybe_write));
        let reissued = always.oneshot(call_with(Some(&merged), "/")).await.unwrap();
        // Issued within the same second, a re-issued token may be byte-identical; what must hold
        // is that it verifies and says the same.
        let again = authority.verify(&header_token(&reissued), None).unwrap();
        assert_eq!(again.state(), &state);
    }

    #[tokio::test]
    async fn an_old_token_or_one_of_a_previous_key_is_renewed() {
        let authority = Arc::new(TokenAuthority::new(SigningKey::new(1, [3u8; 32]).unwrap()));
        let service = ServerSessionLayer::new(authority.clone())
            .renew_after(Duration::from_secs(100))
            .layer(service_fn(maybe_write));
        let now = ryw::signing::now_secs();
        let state = Session::new().snapshot();

        let young = authority.issue_at(&state, None, now - 90).unwrap();
        let kept = service
            .clone()
            .oneshot(call_with(Some(&young), "/"))
            .await
            .unwrap();
        assert_eq!(header_token(&kept), young);

        let old = authority.issue_at(&state, None, now - 110).unwrap();
        let renewed = service
            .clone()
            .oneshot(call_with(Some(&old), "/"))
            .await
            .unwrap();
        let renewed = authority.verify(&header_token(&renewed), None).unwrap();
        assert!(renewed.times().unwrap().0 >= now, "a fresh expiry");
        assert_eq!(renewed.state().id(), state.id());

        authority
            .rotate(SigningKey::new(2, [4u8; 32]).unwrap())
            .unwrap();
        let previous_key = service
            .clone()
            .oneshot(call_with(Some(&young), "/"))
            .await
            .unwrap();
        let token = authority
            .verify(&header_token(&previous_key), None)
            .unwrap();
        assert_eq!(token.signature().unwrap().key_id, 2);
    }

    // The echo and the cache under rotation, expiry, clock skew and hostile headers.

    #[tokio::test]
    async fn a_key_ring_change_during_the_request_is_never_answered_with_the_old_token() {
        // Key 1 retired and a new key given the same id while the request runs: the token it came
        // with no longer verifies and must not come back.
        let key = |id: u8, fill: u8| SigningKey::new(id, [fill; 32]).unwrap();
        let authority = Arc::new(TokenAuthority::new(key(1, 1)));
        let inside = authority.clone();
        let service = ServerSessionLayer::new(authority.clone()).layer(service_fn(
            move |request: Request<String>| {
                let inside = inside.clone();
                async move {
                    if request.uri().query() == Some("rotate") {
                        inside.rotate(key(2, 2)).unwrap();
                        assert!(inside.retire(1));
                        inside.rotate(key(1, 3)).unwrap();
                    }
                    Ok::<_, std::convert::Infallible>(Response::new(String::new()))
                }
            },
        ));
        let token = issued_ago(&authority, 10);
        let response = service
            .oneshot(call_with(Some(&token), "/?rotate"))
            .await
            .unwrap();
        let back = header_token(&response);
        assert_ne!(back, token);
        assert!(authority.verify(&back, None).is_ok());
    }

    #[tokio::test]
    async fn renew_after_zero_and_past_the_ttl_never_echo_a_token_that_should_be_renewed() {
        let authority = Arc::new(
            TokenAuthority::new(ryw::signing::KeyRing::new(
                SigningKey::new(1, [3u8; 32]).unwrap(),
            ))
            .token_ttl(Duration::from_secs(100))
            .leeway(Duration::from_secs(60)),
        );
        let now = ryw::signing::now_secs();
        let state = Session::new().snapshot();

        // Zero: even a token from an instance whose clock is ahead is re-issued.
        let always = ServerSessionLayer::new(authority.clone())
            .renew_after(Duration::ZERO)
            .layer(service_fn(maybe_write));
        let ahead = authority.issue_at(&state, None, now + 30).unwrap();
        let response = always.oneshot(call_with(Some(&ahead), "/")).await.unwrap();
        assert_ne!(header_token(&response), ahead);

        // Longer than the TTL: an expired token (still inside the leeway) is renewed, not echoed
        // with a cookie that deletes itself.
        let long = ServerSessionLayer::new(authority.clone())
            .cookie("sid")
            .renew_after(Duration::from_secs(1_000))
            .layer(service_fn(maybe_write));
        let expired = authority.issue_at(&state, None, now - 130).unwrap();
        let response = long.oneshot(call_with(Some(&expired), "/")).await.unwrap();
        let back = header_token(&response);
        let (_, expires_at) = authority
            .verify_at(&back, None, now)
            .unwrap()
            .times()
            .unwrap();
        assert!(expires_at > now);
        assert!(!response.headers()[SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0"));
    }

    #[tokio::test]
    async fn a_session_too_big_for_a_token_ends_visibly() {
        // Horizons in 80 stores: no coarsening makes that fit in a token.
        let (layer, authority) = layer();
        let service = layer.layer(service_fn(|request: Request<String>| async move {
            let session = request.extensions().get::<Session>().unwrap();
            session.with_state(|s| {
                s.next_write(1_800_000_000_000_000);
                for i in 0..80u8 {
                    s.vector_mut().raise_horizon(ryw::version::StoreHorizon {
                        store: ryw::version::StoreId::new(i),
                        version: ryw::Version::new(1_800_000_000_000_000 + u64::from(i)),
                    });
                }
            });
            Ok::<_, std::convert::Infallible>(Response::new(String::new()))
        }));
        let token = authority.issue(&Session::new().snapshot(), None).unwrap();
        let request = Request::builder()
            .header(COOKIE, format!("sid={token}"))
            .body(String::new())
            .unwrap();
        let response = service.oneshot(request).await.unwrap();
        assert_eq!(
            response.headers()[crate::REJECTED_HEADER],
            "token_oversized"
        );
        assert!(response.headers().get(crate::DEFAULT_HEADER).is_none());
        let set_cookie = response.headers()[SET_COOKIE].to_str().unwrap();
        assert!(set_cookie.starts_with("sid=;") && set_cookie.contains("Max-Age=0"));
    }
}
