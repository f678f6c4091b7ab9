//! The endpoint: one QUIC endpoint that both serves a [`Service`] and calls peers.
//!
//! Each call opens its own bidirectional stream on the one cached connection to the peer, writes
//! one request frame and reads one reply frame. The reply is [`Reply::Answer`] or, when the
//! server could not decode the request, [`Reply::Refused`] with the reason.

use std::{
    collections::HashMap,
    fmt,
    net::SocketAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use quinn::{
    ConnectionError, ReadError, ReadExactError, RecvStream, SendStream, VarInt, WriteError,
    crypto::rustls::{QuicClientConfig, QuicServerConfig},
};
use ring::{digest, hmac};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

pub use crate::faults::Faults;
use crate::{
    Error, Identity, Result, codec,
    faults::{FaultControl, FaultySocket},
    stats::{Counters, Stats},
    tls,
};

/// A connection without traffic for this long is dropped: a dead peer is noticed this fast.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Keep-alive interval, well under [`IDLE_TIMEOUT`] so that live idle connections stay open.
pub const KEEP_ALIVE: Duration = Duration::from_secs(1);

/// Concurrent requests (streams) a peer may have open on one connection.
pub const MAX_CONCURRENT_REQUESTS: u32 = 1024;

/// How long `close` waits for connections to drain.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Application close code: orderly shutdown.
const CLOSE_SHUTDOWN: u32 = 0;
/// Application close code: the peer's certificate names no node.
const CLOSE_REFUSED: u32 = 1;
/// Stream stop code: the request was refused unread.
const STOP_REFUSED: u32 = 1;

/// A peer's node name, as its certificate states it (never as the peer claims it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerName(Arc<str>);

impl PeerName {
    pub(crate) fn new(name: &str) -> Self {
        Self(name.into())
    }

    /// The node name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an endpoint serves: one request type in, one response type out.
pub trait Service: Send + Sync + 'static {
    /// What peers send.
    type Request: Serialize + DeserializeOwned + Send + 'static;
    /// What this node answers.
    type Response: Serialize + DeserializeOwned + Send + 'static;

    /// Answers `request` from node `peer`. Runs in a task of its own per request.
    fn handle(&self, peer: PeerName, request: Self::Request) -> BoxFuture<'static, Self::Response>;
}

/// The reply frame of every request.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply<R> {
    /// The service's response.
    Answer(R),
    /// The request was not handed to the service: why.
    Refused(String),
}

/// One cached connection per peer; the async mutex makes concurrent callers share one dial.
type PeerSlot = Arc<tokio::sync::Mutex<Option<quinn::Connection>>>;

/// A QUIC endpoint that serves `S` and calls peers serving `S`. Cheap to clone.
pub struct Endpoint<S: Service> {
    inner: Arc<Inner<S>>,
}

impl<S: Service> Clone for Endpoint<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct Inner<S> {
    node_name: String,
    quic: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    peers: Mutex<HashMap<String, PeerSlot>>,
    counters: Arc<Counters>,
    faults: Arc<FaultControl>,
    closed: AtomicBool,
    accept_task: tokio::task::JoinHandle<()>,
    _service: std::marker::PhantomData<fn() -> S>,
}

impl<S> Drop for Inner<S> {
    // The accept task holds no reference to Inner, so dropping the last Endpoint stops serving.
    fn drop(&mut self) {
        self.accept_task.abort();
        self.quic
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"endpoint dropped");
    }
}

impl<S: Service> Endpoint<S> {
    /// Binds an endpoint for `identity` on `listen` and starts serving `service`.
    /// Must be called within a tokio runtime.
    pub async fn bind(identity: Identity, listen: SocketAddr, service: Arc<S>) -> Result<Self> {
        let transport = Arc::new(transport_config());
        let server_crypto = QuicServerConfig::try_from(tls::server_config(&identity)?)
            .map_err(|error| Error::Tls(error.to_string()))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server_config.transport_config(Arc::clone(&transport));
        let client_crypto = QuicClientConfig::try_from(tls::client_config(&identity)?)
            .map_err(|error| Error::Tls(error.to_string()))?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(client_crypto));
        client_config.transport_config(transport);

        let socket = std::net::UdpSocket::bind(listen).map_err(|source| Error::Bind {
            addr: listen,
            source,
        })?;
        let runtime = quinn::default_runtime().ok_or_else(|| Error::Bind {
            addr: listen,
            source: std::io::Error::other("no async runtime"),
        })?;
        let socket = runtime
            .wrap_udp_socket(socket)
            .map_err(|source| Error::Bind {
                addr: listen,
                source,
            })?;
        let counters = Arc::new(Counters::default());
        let faults = Arc::new(FaultControl::default());
        // Every datagram quinn sends goes through the fault injection (which, unset, passes
        // it straight on).
        let socket = Arc::new(FaultySocket::new(
            socket,
            Arc::clone(&faults),
            Arc::clone(&counters),
        ));
        let quic = quinn::Endpoint::new_with_abstract_socket(
            quinn::EndpointConfig::new(Arc::new(reset_key(&identity))),
            Some(server_config),
            socket,
            runtime,
        )
        .map_err(|source| Error::Bind {
            addr: listen,
            source,
        })?;

        let accept_task = tokio::spawn(accept_loop(quic.clone(), service, Arc::clone(&counters)));
        Ok(Self {
            inner: Arc::new(Inner {
                node_name: identity.node_name().to_owned(),
                quic,
                client_config,
                peers: Mutex::new(HashMap::new()),
                counters,
                faults,
                closed: AtomicBool::new(false),
                accept_task,
                _service: std::marker::PhantomData,
            }),
        })
    }

    /// The address the endpoint listens on (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        // The socket is bound, so this only fails if the OS does; fall back to unspecified.
        self.inner
            .quic
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// This endpoint's node name.
    pub fn node_name(&self) -> &str {
        &self.inner.node_name
    }

    /// Calls node `node` at `addr` with `request`; the whole call, dial included, must finish
    /// within `deadline`. The peer's certificate must name `node`.
    pub async fn call(
        &self,
        node: &str,
        addr: SocketAddr,
        request: &S::Request,
        deadline: Duration,
    ) -> Result<S::Response> {
        let started = Instant::now();
        let outcome =
            match tokio::time::timeout(deadline, self.call_within(node, addr, request)).await {
                Ok(outcome) => outcome,
                Err(_elapsed) => Err(Error::Timeout {
                    node: node.to_owned(),
                    deadline,
                }),
            };
        let counters = &self.inner.counters;
        match &outcome {
            Ok(_) => {
                Counters::add(&counters.requests_sent, 1);
                counters.record_latency(started.elapsed());
            }
            Err(_) => Counters::add(&counters.requests_failed, 1),
        }
        outcome
    }

    /// A snapshot of the endpoint's counters.
    pub fn stats(&self) -> Stats {
        let open = self.inner.quic.open_connections() as u64;
        self.inner.counters.snapshot(open)
    }

    /// Sets the faults injected into the UDP datagrams this endpoint sends from now on (calls
    /// and replies, handshakes, acknowledgements, keep-alives alike; see [`crate::faults`]).
    /// [`Faults::default`] stops injecting.
    pub fn set_faults(&self, faults: Faults) {
        self.inner.faults.set(faults);
    }

    /// The faults injected into the UDP datagrams this endpoint sends.
    pub fn faults(&self) -> Faults {
        self.inner.faults.get()
    }

    /// Stops serving and calling, closes every connection and waits (briefly) for them to drain.
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.accept_task.abort();
        self.inner
            .quic
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"endpoint closed");
        let _ = tokio::time::timeout(CLOSE_GRACE, self.inner.quic.wait_idle()).await;
    }

    async fn call_within(
        &self,
        node: &str,
        addr: SocketAddr,
        request: &S::Request,
    ) -> Result<S::Response> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        let frame = codec::encode_frame(request)?;
        let slot = self.slot(node);
        let mut retried = false;
        loop {
            let (connection, fresh) = self.connection(&slot, node, addr).await?;
            match self.exchange(&connection, &frame).await {
                Ok(reply) => return self.decode_reply(node, &reply),
                // Only when the peer provably lost the connection's state (it restarted), and
                // only once: the request never reached a live handler on that connection.
                Err(failure) if failure.peer_restarted && !fresh && !retried => retried = true,
                Err(failure) => return Err(failure.into_error(node)),
            }
        }
    }

    fn slot(&self, node: &str) -> PeerSlot {
        let mut peers = self
            .inner
            .peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Arc::clone(peers.entry(node.to_owned()).or_default())
    }

    /// The cached connection to `node`, or a new one; `true` when freshly dialled.
    async fn connection(
        &self,
        slot: &PeerSlot,
        node: &str,
        addr: SocketAddr,
    ) -> Result<(quinn::Connection, bool)> {
        let mut cached = slot.lock().await;
        if let Some(connection) = cached.as_ref()
            && connection.close_reason().is_none()
            && connection.remote_address() == addr
        {
            return Ok((connection.clone(), false));
        }
        let connection = self.dial(node, addr).await?;
        *cached = Some(connection.clone());
        Ok((connection, true))
    }

    async fn dial(&self, node: &str, addr: SocketAddr) -> Result<quinn::Connection> {
        let server_name = tls::server_name(node)?;
        let connecting = self
            .inner
            .quic
            .connect_with(
                self.inner.client_config.clone(),
                addr,
                &server_name.to_str(),
            )
            .map_err(|error| Error::Connect {
                node: node.to_owned(),
                addr,
                reason: error.to_string(),
            })?;
        connecting.await.map_err(|error| {
            if is_local_refusal(&error) {
                Counters::add(&self.inner.counters.refused_handshakes, 1);
            }
            match error {
                ConnectionError::TransportError(_) | ConnectionError::ConnectionClosed(_) => {
                    Error::Handshake {
                        node: node.to_owned(),
                        addr,
                        reason: error.to_string(),
                    }
                }
                other => Error::Connect {
                    node: node.to_owned(),
                    addr,
                    reason: other.to_string(),
                },
            }
        })
    }

    async fn exchange(
        &self,
        connection: &quinn::Connection,
        frame: &[u8],
    ) -> Result<Vec<u8>, Failure> {
        let (mut send, mut recv) = connection.open_bi().await.map_err(Failure::connection)?;
        send.write_all(frame).await.map_err(Failure::write)?;
        // Finishing only fails if the stream is already gone; the read below reports why.
        let _ = send.finish();
        Counters::add(&self.inner.counters.bytes_sent, frame.len() as u64);
        let reply = read_frame(&mut recv).await?;
        Counters::add(
            &self.inner.counters.bytes_received,
            (codec::FRAME_HEADER + reply.len()) as u64,
        );
        Ok(reply)
    }

    fn decode_reply(&self, node: &str, reply: &[u8]) -> Result<S::Response> {
        match codec::decode::<Reply<S::Response>>(reply) {
            Ok(Reply::Answer(response)) => Ok(response),
            Ok(Reply::Refused(message)) => Err(Error::Remote {
                node: node.to_owned(),
                message,
            }),
            Err(error) => {
                Counters::add(&self.inner.counters.decode_errors, 1);
                Err(error)
            }
        }
    }
}

/// Why an exchange failed, and whether the peer provably restarted (a stateless reset).
struct Failure {
    error: FailureKind,
    peer_restarted: bool,
}

enum FailureKind {
    Lost(String),
    Codec(Error),
}

impl Failure {
    fn connection(error: ConnectionError) -> Self {
        Self {
            peer_restarted: matches!(error, ConnectionError::Reset),
            error: FailureKind::Lost(error.to_string()),
        }
    }

    fn write(error: WriteError) -> Self {
        match error {
            WriteError::ConnectionLost(error) => Self::connection(error),
            other => Self::lost(other.to_string()),
        }
    }

    fn read(error: ReadExactError) -> Self {
        match error {
            ReadExactError::ReadError(ReadError::ConnectionLost(error)) => Self::connection(error),
            ReadExactError::FinishedEarly(_) => {
                Self::lost("the peer closed the stream early".into())
            }
            other => Self::lost(other.to_string()),
        }
    }

    fn lost(reason: String) -> Self {
        Self {
            error: FailureKind::Lost(reason),
            peer_restarted: false,
        }
    }

    fn into_error(self, node: &str) -> Error {
        match self.error {
            FailureKind::Lost(reason) => Error::ConnectionLost {
                node: node.to_owned(),
                reason,
            },
            FailureKind::Codec(error) => error,
        }
    }
}

/// Reads one frame; its length is checked before the buffer is allocated.
async fn read_frame(recv: &mut RecvStream) -> Result<Vec<u8>, Failure> {
    let mut header = [0; codec::FRAME_HEADER];
    recv.read_exact(&mut header).await.map_err(Failure::read)?;
    let length = codec::frame_length(header).map_err(|error| Failure {
        error: FailureKind::Codec(error),
        peer_restarted: false,
    })?;
    let mut message = vec![0; length];
    recv.read_exact(&mut message).await.map_err(Failure::read)?;
    Ok(message)
}

fn transport_config() -> quinn::TransportConfig {
    let mut config = quinn::TransportConfig::default();
    // 5 s fits a VarInt, so the conversion cannot fail.
    config.max_idle_timeout(quinn::IdleTimeout::try_from(IDLE_TIMEOUT).ok());
    config.keep_alive_interval(Some(KEEP_ALIVE));
    config.max_concurrent_bidi_streams(VarInt::from_u32(MAX_CONCURRENT_REQUESTS));
    config.max_concurrent_uni_streams(VarInt::from_u32(0));
    config
}

/// The stateless-reset key, derived from the node key: after a restart the node can reset its
/// peers' stale connections instead of leaving them to time out.
fn reset_key(identity: &Identity) -> hmac::Key {
    let mut context = digest::Context::new(&digest::SHA256);
    context.update(b"sd-net stateless reset key v1\0");
    context.update(identity.private_key().secret_der());
    hmac::Key::new(hmac::HMAC_SHA256, context.finish().as_ref())
}

/// A handshake error detected here (bad certificate, wrong name), as opposed to a timeout or
/// the peer's refusal.
fn is_local_refusal(error: &ConnectionError) -> bool {
    matches!(error, ConnectionError::TransportError(_))
}

async fn accept_loop<S: Service>(quic: quinn::Endpoint, service: Arc<S>, counters: Arc<Counters>) {
    while let Some(incoming) = quic.accept().await {
        tokio::spawn(serve_connection(
            incoming,
            Arc::clone(&service),
            Arc::clone(&counters),
        ));
    }
}

async fn serve_connection<S: Service>(
    incoming: quinn::Incoming,
    service: Arc<S>,
    counters: Arc<Counters>,
) {
    let connection = match incoming.await {
        Ok(connection) => connection,
        Err(error) => {
            if is_local_refusal(&error) {
                Counters::add(&counters.refused_handshakes, 1);
            }
            return;
        }
    };
    let Ok(peer) = tls::peer_name(&connection) else {
        Counters::add(&counters.refused_handshakes, 1);
        connection.close(
            VarInt::from_u32(CLOSE_REFUSED),
            b"certificate names no node",
        );
        return;
    };
    // Ends when the connection closes, idles out or the endpoint shuts down.
    while let Ok((send, recv)) = connection.accept_bi().await {
        tokio::spawn(serve_stream(
            peer.clone(),
            send,
            recv,
            Arc::clone(&service),
            Arc::clone(&counters),
        ));
    }
}

async fn serve_stream<S: Service>(
    peer: PeerName,
    mut send: SendStream,
    mut recv: RecvStream,
    service: Arc<S>,
    counters: Arc<Counters>,
) {
    let request = match read_frame(&mut recv).await {
        Ok(message) => {
            Counters::add(
                &counters.bytes_received,
                (codec::FRAME_HEADER + message.len()) as u64,
            );
            codec::decode::<S::Request>(&message)
        }
        Err(Failure {
            error: FailureKind::Codec(error),
            ..
        }) => Err(error),
        // The stream or connection died: nobody is left to answer.
        Err(_) => return,
    };
    let reply = match request {
        Ok(request) => Reply::Answer(service.handle(peer, request).await),
        Err(error) => {
            Counters::add(&counters.decode_errors, 1);
            // Do not read the rest of a refused request.
            let _ = recv.stop(VarInt::from_u32(STOP_REFUSED));
            Reply::Refused(error.to_string())
        }
    };
    let frame = match codec::encode_frame(&reply) {
        Ok(frame) => frame,
        Err(error) => match codec::encode_frame(&Reply::<S::Response>::Refused(format!(
            "the response could not be sent: {error}"
        ))) {
            Ok(frame) => frame,
            Err(_) => return,
        },
    };
    if send.write_all(&frame).await.is_err() {
        return;
    }
    let _ = send.finish();
    Counters::add(&counters.bytes_sent, frame.len() as u64);
    Counters::add(&counters.requests_served, 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_keys_are_stable_per_node_and_differ_between_nodes() {
        let identities = Identity::ephemeral("test", &["a", "b"]).expect("ephemeral");
        let tag = |identity: &Identity| {
            hmac::sign(&reset_key(identity), b"connection id")
                .as_ref()
                .to_vec()
        };
        assert_eq!(tag(&identities[0]), tag(&identities[0].clone()));
        assert_ne!(tag(&identities[0]), tag(&identities[1]));
    }

    #[test]
    fn transport_drops_dead_peers_quickly() {
        assert!(KEEP_ALIVE < IDLE_TIMEOUT);
        assert!(IDLE_TIMEOUT <= Duration::from_secs(10));
    }
}
