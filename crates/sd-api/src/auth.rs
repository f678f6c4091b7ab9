//! The bearer-token check in front of every route.

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::failure::Failure;
use crate::routes::AppState;

/// Lets the request through only with `Authorization: Bearer <the node's token>`.
pub(crate) async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let header = request.headers().get(AUTHORIZATION);
    let refusal = match header.map(|value| bearer(value.as_bytes())) {
        None => {
            "missing `Authorization: Bearer <token>` header (the token is in the agent's data dir, file `token`)"
        }
        Some(None) => "the `Authorization` header is not `Bearer <token>`",
        Some(Some(presented)) if same(presented, state.token.as_bytes()) => {
            return next.run(request).await;
        }
        Some(Some(_)) => "the API token was refused",
    };
    let mut response = Failure::new(StatusCode::UNAUTHORIZED, refusal).into_response();
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// The credentials of a `Bearer` authorization (the scheme is case-insensitive, RFC 9110).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let credentials = rest.trim_ascii();
    (!credentials.is_empty()).then_some(credentials)
}

/// Compares every byte whatever the differences, so that the time taken does not tell a
/// guesser how much of the token it got right. Only the length can differ early, and the
/// length of a token is no secret.
fn same(presented: &[u8], token: &[u8]) -> bool {
    if presented.len() != token.len() {
        return false;
    }
    let difference = presented
        .iter()
        .zip(token)
        .fold(0u8, |acc, (a, b)| std::hint::black_box(acc | (a ^ b)));
    difference == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_takes_the_credentials_of_any_case_scheme() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"BEARER abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Bearerabc"), None);
    }

    #[test]
    fn same_is_exact() {
        assert!(same(b"0123abcd", b"0123abcd"));
        assert!(!same(b"0123abcd", b"0123abce"));
        assert!(!same(b"1123abcd", b"0123abcd"));
        assert!(!same(b"0123abc", b"0123abcd"));
        assert!(!same(b"", b"0123abcd"));
    }
}
