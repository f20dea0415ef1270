//! Bad tokens: why a request's tokens were refused, what the server does about it, and the JSON
//! response it rejects them with (the crate's one shape of error body). Re-exported by
//! [`crate::server`].

use crate::headers::{MAX_TOKENS_PER_REQUEST, REJECTED_HEADER};
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use ryw::signing::VerifyError;
use serde::Serialize;
use std::fmt;

/// What the server does with a request whose token does not verify.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum BadTokenPolicy {
    /// Answer 400 (undecodable) or 401 (untrusted, expired, revoked, another principal's) with a
    /// JSON body `{"error": code, "message": text}` and the [`REJECTED_HEADER`] header, without
    /// calling the handler. The default.
    #[default]
    Reject,
    /// Serve the request in a fresh session and say so in the
    /// [`RESET_HEADER`](crate::RESET_HEADER) response header (value: the error code). The user
    /// loses their read-your-writes fence, never their request.
    StartFresh,
}

/// Why a request's tokens were refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenRejection {
    /// A token did not verify.
    Invalid(VerifyError),
    /// The request carried more than [`MAX_TOKENS_PER_REQUEST`] tokens.
    TooMany {
        /// How many.
        count: usize,
    },
    /// The token header is not visible ASCII.
    NotText,
}

impl fmt::Display for TokenRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenRejection::Invalid(e) => e.fmt(f),
            TokenRejection::TooMany { count } => write!(
                f,
                "request carries {count} session tokens, more than the {MAX_TOKENS_PER_REQUEST} allowed"
            ),
            TokenRejection::NotText => f.write_str("session token header is not visible ASCII"),
        }
    }
}

impl std::error::Error for TokenRejection {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TokenRejection::Invalid(e) => Some(e),
            _ => None,
        }
    }
}

impl TokenRejection {
    /// A stable snake_case code: [`VerifyError::code`], `token_too_many` or `token_not_text`.
    pub fn code(&self) -> &'static str {
        match self {
            TokenRejection::Invalid(e) => e.code(),
            TokenRejection::TooMany { .. } => "token_too_many",
            TokenRejection::NotText => "token_not_text",
        }
    }

    /// 400 for a token that is not a token at all; 401 for one that is not trusted (bad signature,
    /// unknown key, unsigned, expired, revoked, another principal's).
    pub fn status(&self) -> StatusCode {
        match self {
            TokenRejection::Invalid(e) if !e.is_malformed() => StatusCode::UNAUTHORIZED,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The response [`BadTokenPolicy::Reject`] sends: the status, the [`REJECTED_HEADER`]
    /// header, and a JSON body `{"error": code, "message": text}`.
    pub fn to_response<B: From<String>>(&self) -> Response<B> {
        let body = error_body(self.code(), &self.to_string());
        let mut response = Response::new(B::from(body));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(REJECTED_HEADER, HeaderValue::from_static(self.code()));
        response
    }
}

/// The JSON body of this crate's error responses: `{"error": code, "message": text}`.
pub(crate) fn error_body(code: &str, message: &str) -> String {
    to_json(&ErrorBody {
        error: code,
        message,
    })
}

/// The body of an error response.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
}

/// `value` as compact JSON.
fn to_json(value: &impl Serialize) -> String {
    // Serializing a struct of strings cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A string as the rejection bodies write it, without its quotes.
    fn json_escape(s: &str) -> String {
        let quoted = to_json(&s);
        quoted[1..quoted.len() - 1].to_owned()
    }

    #[test]
    fn a_rejection_body_is_its_code_and_message() {
        let response: Response<String> = TokenRejection::TooMany { count: 9 }.to_response();
        assert_eq!(
            response.body(),
            "{\"error\":\"token_too_many\",\"message\":\"request carries 9 session tokens, more than the 8 allowed\"}"
        );
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(
            json_escape("\u{0}\u{8}\t\r\u{c}\u{1f} \u{7f}é/"),
            "\\u0000\\b\\t\\r\\f\\u001f \u{7f}é/"
        );
    }

    #[test]
    fn rejection_bodies_are_json_escaped() {
        assert_eq!(json_escape("a\"b\\c\n"), "a\\\"b\\\\c\\n");
    }
}
