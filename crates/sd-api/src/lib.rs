//! `sd-api`: the HTTP/JSON API every agent serves over its [`sd_runtime::Node`], and the
//! files through which clients on the same host find it (`api.url`, `token`).
//!
//! Owns the routes under [`sd_proto::API_PREFIX`], their status codes and error bodies, the
//! bearer-token check, log and event streaming, `/metrics` (Prometheus), and the web console's
//! static files. The runtime's behaviour (what a deploy, a terminate or a reconfiguration
//! does) is the node's; this crate only translates. docs/api.md is the reference.
//!
//! Guarantees:
//! - Nothing is answered without the node's token: every route, the unknown ones included,
//!   needs `Authorization: Bearer <token>`, compared in constant time. The only exception is
//!   the console's three static files (`/`, `/console.js`, `/console.css`), which hold no
//!   data.
//! - Every error, whatever produced it (the node, a malformed body, an unknown route, a
//!   body over [`sd_proto::MAX_REQUEST_BYTES`]), is a JSON [`sd_proto::ApiError`].
//! - The token is created once (32 bytes from `/dev/urandom`, mode 0600, written atomically)
//!   and reused by every later agent on the same data dir.
//! - [`serve`] returns once the shutdown future completed and every request has ended; log
//!   streams that follow a file end at shutdown too, so they cannot hold it up.

mod auth;
mod console;
mod events;
mod failure;
mod files;
mod logs;
mod metrics;
mod routes;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use sd_proto::FaultSettings;
use sd_runtime::Node;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use files::{TOKEN_FILE, URL_FILE, load_or_create_token, remove_url_file, write_url_file};

/// What went wrong in the API layer (the node's own errors become HTTP responses instead).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file of the data dir (token, api.url) could not be used.
    #[error("cannot {action} `{path}`: {source}")]
    File {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The token file exists but does not hold a usable token.
    #[error("`{path}` does not hold an API token ({reason}); remove it to have a new one created")]
    BadToken {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The listener failed while serving.
    #[error("serving the API: {0}")]
    Serve(std::io::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Sets the faults a node injects into what it sends (its gossip and its peer transport).
pub type FaultHook = Arc<dyn Fn(FaultSettings) + Send + Sync>;

/// What an API serves beyond the node's own routes.
#[derive(Clone, Default)]
pub struct Extras {
    /// `PUT /v1/chaos/faults`, for chaos runs only (`sd agent --chaos`): without a hook the
    /// route does not exist.
    pub fault_hook: Option<FaultHook>,
}

/// The API over `node`, for tests and embedding: every route needs `token`. Log streams
/// that follow a file end only when their deployment does; [`serve`] ends them at shutdown.
pub fn router(node: Node, token: String, extras: Extras) -> axum::Router {
    let (closing, _) = watch::channel(false);
    routes::build(node, token, extras, Arc::new(closing))
}

/// Serves the API over `node` on `listener` until `shutdown` completes, then lets the
/// requests in progress finish (following log streams end at once) and returns.
pub async fn serve(
    node: Node,
    listener: TcpListener,
    token: String,
    extras: Extras,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let (closing, _) = watch::channel(false);
    let closing = Arc::new(closing);
    let app = routes::build(node, token, extras, Arc::clone(&closing));
    let signal = async move {
        shutdown.await;
        closing.send_replace(true);
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(signal)
        .await
        .map_err(Error::Serve)
}
