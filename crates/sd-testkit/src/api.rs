//! The agents' HTTP API, as tests read it: the token from the node's data dir.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, LocalNode, Result};

fn token(node: &LocalNode) -> Result<String> {
    let path = node.data_dir.join("token");
    std::fs::read_to_string(&path)
        .map(|token| token.trim().to_string())
        .map_err(|source| Error::Io { path, source })
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(120)))
        .http_status_as_error(false)
        .build()
        .into()
}

fn answer<T: DeserializeOwned>(
    node: &LocalNode,
    response: std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<T> {
    let failed = |reason: String| Error::Api {
        node: node.name.clone(),
        reason,
    };
    let mut response = response.map_err(|error| failed(error.to_string()))?;
    let status = response.status();
    let body = response
        .body_mut()
        .read_to_string()
        .map_err(|error| failed(error.to_string()))?;
    if !status.is_success() {
        return Err(failed(format!("{status}: {body}")));
    }
    serde_json::from_str(&body).map_err(|error| failed(format!("{error}: {body}")))
}

pub(crate) fn get<T: DeserializeOwned>(node: &LocalNode, path: &str) -> Result<T> {
    let response = agent()
        .get(format!("{}/v1{path}", node.url()))
        .header("Authorization", format!("Bearer {}", token(node)?))
        .call();
    answer(node, response)
}

pub(crate) fn post<B: Serialize>(node: &LocalNode, path: &str, body: &B) -> Result<()> {
    let response = agent()
        .post(format!("{}/v1{path}", node.url()))
        .header("Authorization", format!("Bearer {}", token(node)?))
        .send_json(body);
    answer::<serde_json::Value>(node, response).map(drop)
}

pub(crate) fn delete(node: &LocalNode, path: &str) -> Result<()> {
    let response = agent()
        .delete(format!("{}/v1{path}", node.url()))
        .header("Authorization", format!("Bearer {}", token(node)?))
        .call();
    answer::<serde_json::Value>(node, response).map(drop)
}
