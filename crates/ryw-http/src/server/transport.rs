//! Where a session token travels: read from the token header or the session cookie on the way
//! in, written back in the header (and the cookie, with its attributes) on the way out.

use super::rejection::TokenRejection;
use crate::headers::{tokens_in, MAX_TOKENS_PER_REQUEST};
use cookie::{Cookie, SameSite};
use http::header::{HeaderName, HeaderValue, COOKIE, SET_COOKIE};
use http::HeaderMap;

/// The header a token is read from and written to, and the cookie too when it is configured.
#[derive(Clone, Debug)]
pub(super) struct Transport {
    pub(super) header: HeaderName,
    /// The cookie the token is also read from and written to; `None`: no cookie transport.
    pub(super) cookie: Option<String>,
    pub(super) cookie_attributes: CookieAttributes,
}

/// The tokens a request carries: those of the token header, or else the cookie's one.
pub(super) struct Carried<'a> {
    tokens: [&'a str; MAX_TOKENS_PER_REQUEST],
    count: usize,
    /// Whether the token was read from the cookie.
    pub(super) from_cookie: bool,
}

impl<'a> Carried<'a> {
    /// The tokens, in the order the request carries them.
    pub(super) fn tokens(&self) -> &[&'a str] {
        &self.tokens[..self.count]
    }
}

impl Transport {
    /// The tokens of `headers`: those of the token header (at most [`MAX_TOKENS_PER_REQUEST`]),
    /// or when it has none, the cookie's.
    pub(super) fn read<'a>(&self, headers: &'a HeaderMap) -> Result<Carried<'a>, TokenRejection> {
        let mut tokens: [&str; MAX_TOKENS_PER_REQUEST] = [""; MAX_TOKENS_PER_REQUEST];
        let mut count = 0;
        for token in tokens_in(headers.get_all(&self.header).iter()) {
            let token = token.map_err(|()| TokenRejection::NotText)?;
            if count == MAX_TOKENS_PER_REQUEST {
                return Err(TokenRejection::TooMany {
                    count: MAX_TOKENS_PER_REQUEST + 1,
                });
            }
            tokens[count] = token;
            count += 1;
        }
        let mut from_cookie = false;
        if count == 0 {
            if let Some(cookie) = &self.cookie {
                if let Some(token) = cookie_value(headers, cookie) {
                    tokens[0] = token;
                    count = 1;
                    from_cookie = true;
                }
            }
        }
        Ok(Carried {
            tokens,
            count,
            from_cookie,
        })
    }

    /// The token `text` of `headers` as a header value to answer with: the request's own header
    /// value when it is exactly the token (no copy), else a new one.
    pub(super) fn answer_value(
        &self,
        headers: &HeaderMap,
        text: &str,
        from_cookie: bool,
    ) -> Option<HeaderValue> {
        match headers.get(&self.header) {
            Some(v) if !from_cookie && v.as_bytes() == text.as_bytes() => Some(v.clone()),
            _ => HeaderValue::from_str(text).ok(),
        }
    }

    /// Puts `token` in the token header of a response.
    pub(super) fn set_header(&self, headers: &mut HeaderMap, token: HeaderValue) {
        headers.insert(self.header.clone(), token);
    }

    /// Sets the cookie to `token` for `max_age` seconds, when the cookie transport is on.
    pub(super) fn set_cookie(&self, headers: &mut HeaderMap, token: &str, max_age: u64) {
        if let Some(name) = &self.cookie {
            if let Some(v) = self.cookie_attributes.set_cookie(name, token, max_age) {
                headers.append(SET_COOKIE, v);
            }
        }
    }

    /// Clears the cookie on the `response` that rejects a `request` whose token was read from
    /// the cookie: the browser would otherwise resend it (revoked, expired, signed by a retired
    /// key) until it expires.
    pub(super) fn clear_refused_cookie(&self, request: &HeaderMap, response: &mut HeaderMap) {
        if let Some(cookie) = &self.cookie {
            let header_tokens = tokens_in(request.get_all(&self.header).iter())
                .next()
                .is_some();
            if !header_tokens && cookie_value(request, cookie).is_some() {
                self.set_cookie(response, "", 0);
            }
        }
    }
}

/// The attributes of the session cookie's `Set-Cookie`
/// ([`ServerSessionLayer::cookie`](crate::ServerSessionLayer::cookie)).
#[derive(Clone, Debug)]
pub(super) struct CookieAttributes {
    pub(super) domain: Option<String>,
    pub(super) path: String,
    pub(super) same_site: SameSite,
    pub(super) secure: bool,
}

impl Default for CookieAttributes {
    fn default() -> Self {
        CookieAttributes {
            domain: None,
            path: "/".to_owned(),
            same_site: SameSite::Lax,
            secure: true,
        }
    }
}

impl CookieAttributes {
    /// The `Set-Cookie` value that sets the cookie `name` to `token` for `max_age` seconds
    /// (`HttpOnly` always), or `None` if that is not a valid header value (a name or an
    /// attribute with control characters).
    fn set_cookie(&self, name: &str, token: &str, max_age: u64) -> Option<HeaderValue> {
        let max_age = i64::try_from(max_age).unwrap_or(i64::MAX);
        let mut cookie = Cookie::build((name, token))
            .http_only(true)
            .same_site(self.same_site)
            .path(self.path.as_str())
            .max_age(cookie::time::Duration::seconds(max_age))
            .secure(self.secure)
            .build();
        if let Some(domain) = &self.domain {
            cookie.set_domain(domain.as_str());
        }
        HeaderValue::from_str(&cookie.to_string()).ok()
    }
}

/// The value of the first cookie `name` of the request's `Cookie` headers, its quotes trimmed;
/// `None` when there is none or it is empty (an empty cookie is no token, as an empty header
/// is). A `Cookie` header that is not visible ASCII is skipped, and so is a pair that is not
/// `name=value`.
fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let cookie = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|cookie| cookie.name() == name)?;
    let value = cookie.value_raw()?.trim_matches('"');
    (!value.is_empty()).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{
        call_with, echo_session, header_token, issued_ago, layer, maybe_write,
    };
    use http::header::{HeaderValue, COOKIE, SET_COOKIE};
    use http::{Request, StatusCode};
    use std::time::Duration;
    use tower::{service_fn, Layer, ServiceExt};

    #[tokio::test]
    async fn cookie_transport_round_trip() {
        let (layer, authority) = layer();
        let service = layer.layer(service_fn(echo_session));
        let first = service
            .clone()
            .oneshot(Request::new(String::new()))
            .await
            .unwrap();
        let set_cookie = first.headers()[SET_COOKIE].to_str().unwrap().to_owned();
        assert!(set_cookie.starts_with("sid="), "{set_cookie}");
        assert!(set_cookie.contains("HttpOnly") && set_cookie.split("; ").any(|a| a == "Secure"));
        let token = set_cookie["sid=".len()..set_cookie.find(';').unwrap()].to_owned();
        let id = authority.verify(&token, None).unwrap().state().id();

        let request = Request::builder()
            .header(COOKIE, format!("theme=dark; sid={token}; lang=en"))
            .body(String::new())
            .unwrap();
        let second = service.oneshot(request).await.unwrap();
        assert_eq!(second.into_body(), format!("{id} Continued"));
    }

    #[tokio::test]
    async fn a_refused_cookie_is_cleared() {
        let (layer, _) = layer();
        let service = layer.layer(service_fn(echo_session));
        let request = Request::builder()
            .header(COOKIE, "sid=not-a-token")
            .body(String::new())
            .unwrap();
        let response = service.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let set_cookie = response.headers()[SET_COOKIE].to_str().unwrap();
        assert!(
            set_cookie.starts_with("sid=;") && set_cookie.contains("Max-Age=0"),
            "{set_cookie}"
        );
        // A refused header token leaves cookies alone.
        let request = Request::builder()
            .header(crate::DEFAULT_HEADER, "not-a-token")
            .body(String::new())
            .unwrap();
        let response = service.clone().oneshot(request).await.unwrap();
        assert!(response.headers().get(SET_COOKIE).is_none());
        // An empty token header next to a refused cookie: the cookie was what was read, and is
        // cleared.
        for empty in ["", ","] {
            let request = Request::builder()
                .header(crate::DEFAULT_HEADER, empty)
                .header(COOKIE, "sid=not-a-token")
                .body(String::new())
                .unwrap();
            let response = service.clone().oneshot(request).await.unwrap();
            assert!(
                response.headers().get(SET_COOKIE).is_some(),
                "header {empty:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_header_that_is_not_text_is_rejected() {
        let (layer, _) = layer();
        let service = layer.layer(service_fn(echo_session));
        let request = Request::builder()
            .header(
                crate::DEFAULT_HEADER,
                HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
            )
            .body(String::new())
            .unwrap();
        let response = service.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert!(
            response.body().contains("token_not_text"),
            "{}",
            response.body()
        );
    }

    #[tokio::test]
    async fn an_unchanged_cookie_is_left_alone_and_a_header_token_sets_what_is_left_of_it() {
        let (layer, authority) = layer();
        let service = layer
            .renew_after(Duration::from_secs(1_000))
            .layer(service_fn(maybe_write));
        let token = issued_ago(&authority, 100);
        let request = Request::builder()
            .header(COOKIE, format!("sid={token}"))
            .body(String::new())
            .unwrap();
        let response = service.clone().oneshot(request).await.unwrap();
        assert!(response.headers().get(SET_COOKIE).is_none());
        assert_eq!(
            header_token(&response),
            token,
            "the header still carries it"
        );

        // The same token in the header with the cookie transport on: the cookie is set to it,
        // for what is left of its life (not a full TTL).
        let response = service
            .clone()
            .oneshot(call_with(Some(&token), "/"))
            .await
            .unwrap();
        let set_cookie = response.headers()[SET_COOKIE].to_str().unwrap();
        assert!(
            set_cookie.starts_with(&format!("sid={token};")),
            "{set_cookie}"
        );
        let max_age: u64 = set_cookie
            .split("Max-Age=")
            .nth(1)
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let ttl = authority.ttl().as_secs();
        assert!(
            max_age <= ttl - 100 && max_age + 5 >= ttl - 100,
            "{max_age}"
        );
    }

    #[tokio::test]
    async fn an_empty_cookie_is_no_token() {
        let (layer, _) = layer();
        let service = layer.layer(service_fn(echo_session));
        for cookie in ["sid=", "sid=\"\"", "theme=dark; sid="] {
            let request = Request::builder()
                .header(COOKIE, cookie)
                .body(String::new())
                .unwrap();
            let response = service.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{cookie}");
            assert!(response.body().ends_with(" New"), "{}", response.body());
        }
    }
}
