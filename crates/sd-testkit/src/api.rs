//! The agents' HTTP API, as tests read it: the token from the node's data dir.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, LocalNode, Result};

fn token(node: &LocalNode) -> Result<String> {
    token_in(&node.data_dir)
}

fn token_in(data_dir: &std::path::Path) -> Result<String> {
    let path = data_dir.join("token");
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

/// Reads one node's API from any thread, each request with a deadline: what a chaos run's
/// observer uses while the nemesis stops and starts agents (a paused agent never answers).
#[derive(Debug, Clone)]
pub struct Probe {
    /// The node.
    pub name: String,
    pub(crate) url: String,
    pub(crate) data_dir: std::path::PathBuf,
}

impl Probe {
    /// GET `path` (below `/v1`), given up after `within`.
    pub fn get<T: DeserializeOwned>(&self, path: &str, within: Duration) -> Result<T> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(within))
            .http_status_as_error(false)
            .build()
            .into();
        let response = agent
            .get(format!("{}/v1{path}", self.url))
            .header(
                "Authorization",
                format!("Bearer {}", token_in(&self.data_dir)?),
            )
            .call();
        answer(&self.name, response)
    }
}

fn answer<T: DeserializeOwned>(
    node: &str,
    response: std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<T> {
    let failed = |reason: String| Error::Api {
        node: node.to_string(),
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
    answer(&node.name, response)
}

pub(crate) fn post<B: Serialize>(node: &LocalNode, path: &str, body: &B) -> Result<()> {
    let response = agent()
        .post(format!("{}/v1{path}", node.url()))
        .header("Authorization", format!("Bearer {}", token(node)?))
        .send_json(body);
    answer::<serde_json::Value>(&node.name, response).map(drop)
}

pub(crate) fn put<B: Serialize>(node: &LocalNode, path: &str, body: &B) -> Result<()> {
    let response = agent()
        .put(format!("{}/v1{path}", node.url()))
        .header("Authorization", format!("Bearer {}", token(node)?))
        .send_json(body);
    answer::<serde_json::Value>(&node.name, response).map(drop)
}

pub(crate) fn delete(node: &LocalNode, path: &str) -> Result<()> {
    let response = agent()
        .delete(format!("{}/v1{path}", node.url()))
        .header("Authorization", format!("Bearer {}", token(node)?))
        .call();
    answer::<serde_json::Value>(&node.name, response).map(drop)
}
