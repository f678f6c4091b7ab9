//! The web console: three static files built into the binary and served at `/` without a
//! token (they hold no data; the page asks for the token and sends it with every API call).

use axum::Router;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::http::{Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::{MethodRouter, get};

use crate::failure::Failure;

const INDEX: &str = include_str!("../console/index.html");
const SCRIPT: &str = include_str!("../console/console.js");
const STYLE: &str = include_str!("../console/console.css");

/// Only the agent itself: no other origin's script, style, frame or connection.
const POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

fn file(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, content_type),
            (CACHE_CONTROL, "no-cache"),
            (CONTENT_SECURITY_POLICY, POLICY),
        ],
        body,
    )
}

/// `GET` of one file; another method is a JSON 405 like the API's.
fn serve<S: Clone + Send + Sync + 'static>(
    content_type: &'static str,
    body: &'static str,
) -> MethodRouter<S> {
    get(move || async move { file(content_type, body) }).fallback(
        |method: Method, uri: Uri| async move {
            Failure::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{} does not take {method}", uri.path()),
            )
        },
    )
}

/// `GET /`, `/console.js`, `/console.css`.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", serve("text/html; charset=utf-8", INDEX))
        .route(
            "/console.js",
            serve("text/javascript; charset=utf-8", SCRIPT),
        )
        .route("/console.css", serve("text/css; charset=utf-8", STYLE))
}
