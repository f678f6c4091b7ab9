//! The routes: each translates one request into a call on the node and its answer (or
//! error) into a response. docs/api.md documents them.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use sd_proto::{
    API_PREFIX, ComponentStatus, DeployRequest, DeploymentState, DeploymentStatus,
    DeploymentSummary, Event, FaultSettings, MAX_REQUEST_BYTES, NodeInfo, Reconfiguration,
    ReconfigureRequest, ValidateRequest, Validation,
};
use sd_runtime::{LogLocation, Node};
use serde::Deserialize;
use tokio::sync::watch;

use crate::Extras;
use crate::auth::require_token;
use crate::failure::Failure;
use crate::logs::Tail;

/// What every handler sees.
#[derive(Clone)]
pub(crate) struct AppState {
    node: Node,
    pub(crate) token: Arc<str>,
    /// Set to true when the server shuts down, to end the log streams that follow a file.
    closing: Arc<watch::Sender<bool>>,
}

type Answer<T> = Result<T, Failure>;

pub(crate) fn build(
    node: Node,
    token: String,
    extras: Extras,
    closing: Arc<watch::Sender<bool>>,
) -> Router {
    let fault_hook = extras.fault_hook;
    let state = AppState {
        node,
        token: token.into(),
        closing,
    };
    let deployment = format!("{API_PREFIX}/deployments/{{name}}");
    let mut router = Router::new();
    if let Some(hook) = fault_hook {
        router = router.route(
            &format!("{API_PREFIX}/chaos/faults"),
            put(move |body: Result<Bytes, BytesRejection>| set_faults(hook.clone(), body)),
        );
    }
    router
        .route(&format!("{API_PREFIX}/node"), get(node_info))
        .route(&format!("{API_PREFIX}/nodes"), get(nodes))
        .route(&format!("{API_PREFIX}/cluster"), get(cluster_stats))
        .route(&format!("{API_PREFIX}/deployments"), get(list).post(deploy))
        .route(&format!("{API_PREFIX}/validate"), post(validate))
        .route(&format!("{API_PREFIX}/events"), get(events))
        .route(&deployment, get(status).delete(terminate))
        .route(&format!("{deployment}/components/{{path}}"), get(component))
        .route(&format!("{deployment}/reconfigure"), post(reconfigure))
        .route(&format!("{deployment}/logs"), get(logs))
        .route("/metrics", get(metrics))
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        // Layers wrap the fallbacks too: an unknown route without the token is a 401.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ))
        // The console's static files come after the token check: they hold no data.
        .merge(crate::console::routes())
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(state)
}

async fn unknown_route(method: Method, uri: Uri) -> Failure {
    Failure::new(
        StatusCode::NOT_FOUND,
        format!(
            "no route {method} {}; the API is under {API_PREFIX} (see docs/api.md)",
            uri.path()
        ),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> Failure {
    Failure::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} does not take {method}", uri.path()),
    )
}

/// `GET /v1/node`.
async fn node_info(State(state): State<AppState>) -> Json<NodeInfo> {
    Json(state.node.info())
}

/// `GET /v1/nodes`: the cluster's members as this node sees them.
async fn nodes(State(state): State<AppState>) -> Json<Vec<sd_proto::MemberInfo>> {
    Json(state.node.nodes())
}

/// `GET /v1/cluster`: the gossip's and the peer transport's counters (`null` alone).
async fn cluster_stats(State(state): State<AppState>) -> Json<Option<sd_proto::ClusterStats>> {
    Json(state.node.cluster_stats())
}

/// `GET /v1/deployments`.
async fn list(State(state): State<AppState>) -> Json<Vec<DeploymentSummary>> {
    Json(state.node.cluster_deployments().await)
}

/// `POST /v1/deployments`: 201 with the summary once the deploy is acknowledged (durable).
async fn deploy(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Answer<(StatusCode, Json<DeploymentSummary>)> {
    // The body is parsed here rather than by `Json` so that every refusal is an `ApiError`
    // and a missing `Content-Type` is no reason to refuse.
    let request: DeployRequest = serde_json::from_slice(&body?).map_err(|error| {
        Failure::bad_request(format!(
            "the request body is not a deploy request (JSON with `name`, `description` and optional `source`): {error}"
        ))
    })?;
    let name = request.name.clone();
    state.node.deploy(request).await?;
    let summary = state.node.status(&name)?.deployment;
    Ok((StatusCode::CREATED, Json(summary)))
}

/// Reads a JSON body of type `T`; `what` says what it should have been.
fn json_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    what: &str,
) -> Answer<T> {
    serde_json::from_slice(&body?)
        .map_err(|error| Failure::bad_request(format!("the request body is not {what}: {error}")))
}

/// `POST /v1/validate`: 200 when the description would deploy, else 400 with each error.
async fn validate(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Answer<Json<Validation>> {
    let request: ValidateRequest = json_body(
        body,
        "a validate request (JSON with `description` and optional `source`)",
    )?;
    let components = state
        .node
        .validate(&request.source, &request.description)
        .await?;
    Ok(Json(Validation {
        ok: true,
        components,
    }))
}

/// `GET /v1/deployments/{name}/components/{path}`: one component.
async fn component(
    State(state): State<AppState>,
    names: Result<Path<(String, String)>, PathRejection>,
) -> Answer<Json<ComponentStatus>> {
    let Path((name, path)) = names?;
    let status = state.node.cluster_status(&name).await?;
    status
        .component(&sd_runtime::plan::full_path(&path))
        .cloned()
        .map(Json)
        .ok_or_else(|| {
            sd_runtime::Error::NoComponent {
                deployment: name,
                path,
            }
            .into()
        })
}

/// `POST /v1/deployments/{name}/reconfigure`: a live change, validated then committed.
async fn reconfigure(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Answer<Json<Reconfiguration>> {
    let Path(name) = name?;
    let request: ReconfigureRequest = json_body(
        body,
        "a reconfigure request (JSON with `path`, `attribute` and `value`)",
    )?;
    Ok(Json(state.node.reconfigure(&name, request).await?))
}

#[derive(Debug, Deserialize)]
struct EventParams {
    #[serde(default)]
    follow: bool,
    #[serde(default)]
    history: bool,
}

/// `GET /v1/events[?follow=true[&history=true]]`: the cluster's lifecycle events.
async fn events(
    State(state): State<AppState>,
    params: Result<Query<EventParams>, QueryRejection>,
) -> Answer<Response> {
    let Query(params) = params?;
    if params.follow {
        let closing = state.closing.subscribe();
        let stream = crate::events::follow(state.node.clone(), params.history, closing).await;
        return Ok(stream.into_response());
    }
    let events: Vec<Event> = crate::events::recent(&state.node).await;
    Ok(Json(events).into_response())
}

/// `GET /metrics`: Prometheus' text format.
async fn metrics(State(state): State<AppState>) -> Response {
    let text = crate::metrics::render(&state.node.info().name, &state.node.metrics());
    (
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

/// `PUT /v1/chaos/faults` (agents started with `--chaos` only).
async fn set_faults(
    hook: crate::FaultHook,
    body: Result<Bytes, BytesRejection>,
) -> Answer<Json<FaultSettings>> {
    let settings: FaultSettings = serde_json::from_slice(&body?).map_err(|error| {
        Failure::bad_request(format!(
            "the request body is not fault settings (JSON with `gossip` and `quic`, each with `loss`, `delay_ms`, `duplicate`): {error}"
        ))
    })?;
    for (link, faults) in [("gossip", settings.gossip), ("quic", settings.quic)] {
        faults
            .check()
            .map_err(|reason| Failure::bad_request(format!("{link}: {reason}")))?;
    }
    hook(settings);
    Ok(Json(settings))
}

/// `GET /v1/deployments/{name}`.
async fn status(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> Answer<Json<DeploymentStatus>> {
    let Path(name) = name?;
    Ok(Json(state.node.cluster_status(&name).await?))
}

#[derive(Debug, Deserialize)]
struct TerminateParams {
    #[serde(default)]
    wait: bool,
}

/// `DELETE /v1/deployments/{name}[?wait=true]`: 200 once terminated, or 202 once started.
async fn terminate(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
    params: Result<Query<TerminateParams>, QueryRejection>,
) -> Answer<(StatusCode, Json<DeploymentSummary>)> {
    let Path(name) = name?;
    let Query(params) = params?;
    let mut summary = state.node.cluster_status(&name).await?.deployment;
    if params.wait {
        state.node.terminate(&name).await?;
        summary.state = DeploymentState::Terminated;
        return Ok((StatusCode::OK, Json(summary)));
    }
    let node = state.node.clone();
    // A terminate that fails leaves the deployment listed, in the state that says why; and
    // one refused because another terminate holds the name has that one to finish it.
    tokio::spawn(async move { node.terminate(&name).await });
    Ok((StatusCode::ACCEPTED, Json(summary)))
}

#[derive(Debug, Deserialize)]
struct LogParams {
    path: String,
    #[serde(default)]
    follow: bool,
}

/// `GET /v1/deployments/{name}/logs?path=sfConfig:a[&follow=true]`: the log as text.
/// The most read from another node at once.
const CHUNK: u32 = 64 << 10;

/// A log on another node, read through it in chunks (and, following, polled).
struct RemoteTail {
    node: sd_runtime::Node,
    peer: String,
    deployment: String,
    path: String,
    offset: u64,
    follow: bool,
    closing: tokio::sync::watch::Receiver<bool>,
}

impl RemoteTail {
    fn into_body(self) -> axum::body::Body {
        axum::body::Body::from_stream(futures::stream::unfold(self, |mut tail| async move {
            loop {
                let read = tail
                    .node
                    .read_log_on(&tail.peer, &tail.deployment, &tail.path, tail.offset, CHUNK)
                    .await;
                match read {
                    Ok((bytes, next)) if !bytes.is_empty() => {
                        tail.offset = next;
                        return Some((
                            Ok::<_, std::io::Error>(axum::body::Bytes::from(bytes)),
                            tail,
                        ));
                    }
                    Ok(_) if tail.follow && !*tail.closing.borrow() => {
                        tokio::select! {
                            () = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
                            _ = tail.closing.changed() => return None,
                        }
                    }
                    // The end, or the node no longer has it (the deployment ended there).
                    _ => return None,
                }
            }
        }))
    }
}

async fn logs(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
    params: Result<Query<LogParams>, QueryRejection>,
) -> Answer<Response> {
    let Path(name) = name?;
    let Query(params) = params?;
    let body = match state.node.log_location(&name, &params.path).await? {
        LogLocation::Here(file) => {
            let node = state.node.clone();
            let component = params.path;
            // The log is removed when its deployment ends (terminated or failed), and then
            // `log_path` refuses: that ends a follow.
            let alive = move || node.log_path(&name, &component).is_ok();
            Tail::new(file, params.follow, alive, state.closing.subscribe()).into_body()
        }
        LogLocation::On(peer) => RemoteTail {
            node: state.node.clone(),
            peer,
            deployment: name,
            path: params.path,
            offset: 0,
            follow: params.follow,
            closing: state.closing.subscribe(),
        }
        .into_body(),
    };
    let headers = [
        (
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        ),
        (CACHE_CONTROL, HeaderValue::from_static("no-store")),
    ];
    Ok((headers, body).into_response())
}
