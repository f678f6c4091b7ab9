//! A test service and helpers shared by the integration tests.
#![allow(dead_code)]

use std::{net::SocketAddr, sync::Arc, time::Duration};

use sd_net::{BoxFuture, Endpoint, Identity, PeerName, Service};
use serde::{Deserialize, Serialize};

/// What the test service understands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    Echo(String),
    Sleep(u64),
    WhoAmI,
}

/// What it answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Echo(String),
    Slept(u64),
    YouAre(String),
}

pub struct TestService;

impl Service for TestService {
    type Request = Request;
    type Response = Response;

    fn handle(&self, peer: PeerName, request: Request) -> BoxFuture<'static, Response> {
        Box::pin(async move {
            match request {
                Request::Echo(text) => Response::Echo(text),
                Request::Sleep(millis) => {
                    tokio::time::sleep(Duration::from_millis(millis)).await;
                    Response::Slept(millis)
                }
                Request::WhoAmI => Response::YouAre(peer.to_string()),
            }
        })
    }
}

pub type TestEndpoint = Endpoint<TestService>;

pub const DEADLINE: Duration = Duration::from_secs(5);

pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

pub async fn bind(identity: Identity) -> TestEndpoint {
    Endpoint::bind(identity, loopback(), Arc::new(TestService))
        .await
        .expect("bind")
}

/// Endpoints for `nodes` of one throwaway cluster, in order.
pub async fn cluster(nodes: &[&str]) -> Vec<TestEndpoint> {
    let mut endpoints = Vec::new();
    for identity in Identity::ephemeral("test", nodes).expect("ephemeral cluster") {
        endpoints.push(bind(identity).await);
    }
    endpoints
}

/// A bare quinn client with the given rustls config, connected to `addr` as `server_name`.
pub async fn raw_connection(
    config: rustls::ClientConfig,
    addr: SocketAddr,
    server_name: &str,
) -> anyhow::Result<(quinn::Endpoint, quinn::Connection)> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(config)?;
    let mut endpoint = quinn::Endpoint::client(loopback())?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let connection = endpoint.connect(addr, server_name)?.await?;
    Ok((endpoint, connection))
}

/// Sends raw bytes on a new stream and reads the reply frame's message.
pub async fn raw_exchange(connection: &quinn::Connection, bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    let (mut send, mut recv) = connection.open_bi().await?;
    // The server may stop reading a refused request: a failed write is expected then.
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    let mut header = [0; 4];
    recv.read_exact(&mut header).await?;
    let length = sd_net::codec::frame_length(header)?;
    let mut message = vec![0; length];
    recv.read_exact(&mut message).await?;
    Ok(message)
}
