//! The sealed gossip transport: chitchat's UDP transport with authenticated encryption.
//!
//! A packet on the wire is
//!
//! ```text
//! version (1 byte) | nonce (24 bytes) | XChaCha20-Poly1305 ciphertext of the chitchat datagram + tag (16 bytes)
//! nonce = sender random (8) | unix time in ms (8, LE) | counter (8, LE)
//! ```
//!
//! The key is `blake3::derive_key("sd gossip v1", gossip_key || cluster_name)` and the
//! associated data binds the cluster name and the version byte, so a packet of another cluster
//! fails authentication even under the same gossip key. The timestamp travels in the nonce, so
//! it is authenticated too: a packet more than [`MAX_PACKET_AGE`] away from the receiver's
//! clock is refused, and an exact duplicate within that window is refused by a bounded set of
//! recent nonces ([`ReplayWindow`]). Refused packets are dropped silently and counted.
//!
//! chitchat 0.13 does not expose the encoding of its envelopes, so each socket keeps a private
//! plaintext codec on loopback: chitchat's own `UdpSocket` encodes an envelope by sending it to
//! a tap socket, and decodes one by receiving it from that tap. The codec only accepts the tap
//! and the tap only the codec, so nothing from outside reaches chitchat unsealed.
//!
//! The codec drops what it cannot decode without a word, so an authentic packet's plaintext is
//! checked first ([`check_envelope`]): one that chitchat would refuse, or should not be handed,
//! is dropped and counted as malformed at once, and only plaintexts chitchat decodes reach the
//! codec. Should the two ever disagree, the codec's answer is awaited until a deadline fixed
//! when the plaintext was handed over, so that chitchat cancelling `recv` at every gossip round
//! cannot push it back: the plaintext is then counted as malformed and reception goes on.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use async_trait::async_trait;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpSocket};
use chitchat::{ChitchatEnvelope, ChitchatId, Serializable};

use crate::envelope::check_envelope;
use crate::{Error, Result};

/// The packet format version written in the first byte.
pub const PACKET_VERSION: u8 = 1;
/// Length of the nonce carried in the header.
pub const NONCE_LEN: usize = 24;
/// Length of the header: version byte and nonce.
pub const HEADER_LEN: usize = 1 + NONCE_LEN;
/// Length of the Poly1305 tag appended to the ciphertext.
pub const TAG_LEN: usize = 16;
/// Largest packet sent or accepted: the largest UDP payload over IPv4.
pub const MAX_PACKET_LEN: usize = 65_507;
/// Packets whose timestamp is further than this from the receiver's clock are refused.
pub const MAX_PACKET_AGE: Duration = Duration::from_secs(5);
/// How many recent nonces are remembered to refuse duplicates.
pub const MAX_REMEMBERED_NONCES: usize = 65_536;

const KEY_CONTEXT: &str = "sd gossip v1";
const AD_PREFIX: &[u8] = b"sd gossip v1\0";
/// The codec is fed on loopback, so a datagram it accepts is there at once; waiting longer
/// only happens if [`check_envelope`] accepted bytes chitchat's decoder refuses.
const CODEC_WAIT: Duration = Duration::from_millis(100);
const RECV_BUFFER_LEN: usize = 65_536;

/// The sealing key of one cluster: derived from the gossip key and bound to the cluster name.
#[derive(Clone)]
pub struct PacketKey {
    cipher: XChaCha20Poly1305,
    associated_data: Vec<u8>,
}

impl PacketKey {
    /// Derives the key of `cluster_name` from the shared `gossip_key`.
    pub fn new(gossip_key: &[u8; 32], cluster_name: &str) -> PacketKey {
        let mut material = Vec::with_capacity(32 + cluster_name.len());
        material.extend_from_slice(gossip_key);
        material.extend_from_slice(cluster_name.as_bytes());
        let derived = blake3::derive_key(KEY_CONTEXT, &material);
        let mut associated_data = AD_PREFIX.to_vec();
        associated_data.push(PACKET_VERSION);
        associated_data.extend_from_slice(cluster_name.as_bytes());
        PacketKey {
            cipher: XChaCha20Poly1305::new(&derived.into()),
            associated_data,
        }
    }
}

impl std::fmt::Debug for PacketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PacketKey(..)")
    }
}

/// A packet that passed [`open_packet`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedPacket {
    /// The nonce, unique per packet: what [`ReplayWindow`] remembers.
    pub nonce: [u8; NONCE_LEN],
    /// When the sender sealed it, in ms since the Unix epoch.
    pub sent_at_ms: u64,
    /// The chitchat datagram.
    pub plaintext: Vec<u8>,
}

/// Seals `plaintext` into a packet. `sender` distinguishes senders sharing the key, and
/// `counter` must not repeat for one sender within a millisecond.
pub fn seal_packet(
    key: &PacketKey,
    sender: u64,
    counter: u64,
    now_ms: u64,
    plaintext: &[u8],
) -> Result<Vec<u8>> {
    let packet_len = HEADER_LEN + plaintext.len() + TAG_LEN;
    if packet_len > MAX_PACKET_LEN {
        return Err(Error::PacketTooLarge(packet_len));
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce[..8].copy_from_slice(&sender.to_le_bytes());
    nonce[8..16].copy_from_slice(&now_ms.to_le_bytes());
    nonce[16..].copy_from_slice(&counter.to_le_bytes());
    let payload = Payload {
        msg: plaintext,
        aad: &key.associated_data,
    };
    // Encryption fails only for plaintexts far beyond the size checked above.
    let ciphertext = key
        .cipher
        .encrypt(XNonce::from_slice(&nonce), payload)
        .map_err(|_| Error::PacketTooLarge(packet_len))?;
    let mut packet = Vec::with_capacity(packet_len);
    packet.push(PACKET_VERSION);
    packet.extend_from_slice(&nonce);
    packet.extend_from_slice(&ciphertext);
    Ok(packet)
}

/// Opens a packet received at `now_ms` (ms since the Unix epoch): checks its size, version and
/// freshness, then authenticates and decrypts it. Pure, and never panics whatever the bytes,
/// so a fuzz target can call it directly. Duplicates are the caller's [`ReplayWindow`]'s job.
pub fn open_packet(key: &PacketKey, packet: &[u8], now_ms: u64) -> Result<OpenedPacket> {
    if packet.len() < HEADER_LEN + TAG_LEN {
        return Err(Error::PacketTooShort(packet.len()));
    }
    if packet.len() > MAX_PACKET_LEN {
        return Err(Error::PacketTooLarge(packet.len()));
    }
    let (header, ciphertext) = packet.split_at(HEADER_LEN);
    let (version, nonce_bytes) = header.split_at(1);
    if version[0] != PACKET_VERSION {
        return Err(Error::UnknownPacketVersion(version[0]));
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(nonce_bytes);
    let mut sent_at = [0u8; 8];
    sent_at.copy_from_slice(&nonce[8..16]);
    let sent_at_ms = u64::from_le_bytes(sent_at);
    // Checked before decrypting so that floods of old packets cost no cryptography; a forged
    // timestamp is then counted as stale rather than as a bad tag.
    let age_ms = now_ms.abs_diff(sent_at_ms);
    if u128::from(age_ms) > MAX_PACKET_AGE.as_millis() {
        return Err(Error::StalePacket { age_ms });
    }
    let payload = Payload {
        msg: ciphertext,
        aad: &key.associated_data,
    };
    let plaintext = key
        .cipher
        .decrypt(XNonce::from_slice(&nonce), payload)
        .map_err(|_| Error::BadAuth)?;
    Ok(OpenedPacket {
        nonce,
        sent_at_ms,
        plaintext,
    })
}

/// Everything a datagram received by the node `local` (if known) goes through before chitchat
/// sees it: [`open_packet`], the replay `window`, [`check_envelope`] on the plaintext, then
/// the node's digest `budget`. Never panics whatever the bytes (a panic of the envelope check
/// would be caught and refuse the packet), so a fuzz target can call it directly; the error
/// tells which [`GossipStats`] counter the refusal goes to.
pub fn accept_packet(
    key: &PacketKey,
    window: &mut ReplayWindow,
    local: Option<&ChitchatId>,
    budget: &mut DigestBudget,
    packet: &[u8],
    now_ms: u64,
) -> Result<OpenedPacket> {
    let opened = open_packet(key, packet, now_ms)?;
    // Before the content check: a replay of a refused packet counts as a replay.
    window.check(&opened, now_ms)?;
    let checked = std::panic::catch_unwind(|| check_envelope(&opened.plaintext, local))
        .unwrap_or(Err(Error::BadEnvelope("the check of the content panicked")))?;
    budget.admit(&checked.digest_ids)?;
    Ok(opened)
}

/// The most the node's own chitchat digest may grow to, in bytes. chitchat 0.13 adds every
/// node a received digest lists to its own state, and so to its own digest, which its replies
/// must hold: past 65 403 bytes its `DeltaSerializer` fails `assert!(mtu >= 100)` on the next
/// SYN, killing its server task, and past about 65 450 its own SYNs no longer fit a sealed
/// datagram. A digest entry takes 41 bytes plus the node name (IPv4), so this is well over a
/// thousand nodes with short names: more than chitchat's datagrams could carry anyway.
pub const MAX_DIGEST_LEN: usize = 65_000;
/// How long an id admitted by [`DigestBudget::admit`] stays counted when chitchat's state, as
/// reported by [`DigestBudget::reset`], does not list it (chitchat does not add every id, and
/// one may still be on its way to chitchat when a reset comes).
const ADMITTED_GRACE: Duration = Duration::from_secs(5);

/// The node ids in this node's own chitchat digest, as last read from chitchat
/// ([`DigestBudget::reset`]) plus those admitted since: a message whose digest would make it
/// outgrow [`MAX_DIGEST_LEN`] is refused ([`Error::BadEnvelope`]). Without any reset, every id
/// ever admitted is counted.
#[derive(Debug, Default)]
pub struct DigestBudget {
    known: HashSet<ChitchatId>,
    known_len: usize,
    admitted: HashMap<ChitchatId, std::time::Instant>,
    admitted_len: usize,
}

/// What one node takes in a V0 digest: its id, heartbeat, last GC version, max version.
fn digest_entry_len(id: &ChitchatId) -> usize {
    id.serialized_len() + 24
}

impl DigestBudget {
    /// Replaces the known ids with those of chitchat's digest now (its nodes not scheduled for
    /// deletion); an id admitted a moment ago stays counted until chitchat lists it.
    pub fn reset(&mut self, ids: impl IntoIterator<Item = ChitchatId>) {
        self.known = ids.into_iter().collect();
        self.known_len = self.known.iter().map(digest_entry_len).sum();
        let known = &self.known;
        self.admitted.retain(|id, admitted_at| {
            !known.contains(id) && admitted_at.elapsed() < ADMITTED_GRACE
        });
        self.admitted_len = self.admitted.keys().map(digest_entry_len).sum();
    }

    /// The size of the digest if chitchat added every id counted, in bytes.
    pub fn digest_len(&self) -> usize {
        2 + self.known_len + self.admitted_len
    }

    /// Counts the ids of an accepted message's digest, or refuses the message if they would
    /// make the digest outgrow [`MAX_DIGEST_LEN`].
    pub fn admit(&mut self, ids: &[ChitchatId]) -> Result<()> {
        let mut new: Vec<&ChitchatId> = ids
            .iter()
            .filter(|id| !self.known.contains(*id) && !self.admitted.contains_key(*id))
            .collect();
        new.sort_unstable();
        new.dedup();
        let new_len: usize = new.iter().map(|id| digest_entry_len(id)).sum();
        if self.digest_len() + new_len > MAX_DIGEST_LEN {
            return Err(Error::BadEnvelope("a digest that would outgrow a datagram"));
        }
        let now = std::time::Instant::now();
        for id in new {
            self.admitted.insert(id.clone(), now);
        }
        self.admitted_len += new_len;
        Ok(())
    }
}

/// The nonces of recently accepted packets, to refuse exact duplicates. Bounded: at most
/// [`MAX_REMEMBERED_NONCES`], each forgotten once its packet would be refused as stale anyway.
#[derive(Debug, Default)]
pub struct ReplayWindow {
    seen: HashSet<[u8; NONCE_LEN]>,
    order: VecDeque<(u64, [u8; NONCE_LEN])>,
}

impl ReplayWindow {
    /// Records an opened packet's nonce; refuses it if it was seen within the window.
    pub fn check(&mut self, opened: &OpenedPacket, now_ms: u64) -> Result<()> {
        let horizon_ms = now_ms.saturating_sub(MAX_PACKET_AGE.as_millis() as u64);
        while let Some(&(sent_at_ms, nonce)) = self.order.front() {
            if sent_at_ms >= horizon_ms && self.order.len() < MAX_REMEMBERED_NONCES {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&nonce);
        }
        if !self.seen.insert(opened.nonce) {
            return Err(Error::ReplayedPacket);
        }
        self.order.push_back((opened.sent_at_ms, opened.nonce));
        Ok(())
    }

    /// How many nonces are remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no nonce is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// What the transport sent, received and dropped since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GossipStats {
    /// Packets sent (sealed), duplicates injected by [`Faults`] included.
    pub sent_packets: u64,
    /// Bytes sent (sealed).
    pub sent_bytes: u64,
    /// Packets that passed every check and were handed to chitchat.
    pub received_packets: u64,
    /// Bytes of those packets (sealed).
    pub received_bytes: u64,
    /// Packets refused for a bad tag: another key, another cluster, or altered.
    pub dropped_bad_auth: u64,
    /// Packets refused as stale or as duplicates.
    pub dropped_replay: u64,
    /// Packets refused for their size or version, or authentic ones whose content is not a
    /// chitchat message this node accepts ([`check_envelope`]).
    pub dropped_malformed: u64,
}

#[derive(Debug, Default)]
struct StatsCounters {
    sent_packets: AtomicU64,
    sent_bytes: AtomicU64,
    received_packets: AtomicU64,
    received_bytes: AtomicU64,
    dropped_bad_auth: AtomicU64,
    dropped_replay: AtomicU64,
    dropped_malformed: AtomicU64,
}

impl StatsCounters {
    fn snapshot(&self) -> GossipStats {
        GossipStats {
            sent_packets: self.sent_packets.load(Ordering::Relaxed),
            sent_bytes: self.sent_bytes.load(Ordering::Relaxed),
            received_packets: self.received_packets.load(Ordering::Relaxed),
            received_bytes: self.received_bytes.load(Ordering::Relaxed),
            dropped_bad_auth: self.dropped_bad_auth.load(Ordering::Relaxed),
            dropped_replay: self.dropped_replay.load(Ordering::Relaxed),
            dropped_malformed: self.dropped_malformed.load(Ordering::Relaxed),
        }
    }

    fn count_sent(&self, bytes: usize) {
        self.sent_packets.fetch_add(1, Ordering::Relaxed);
        self.sent_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn count_drop(&self, error: &Error) {
        let counter = match error {
            Error::BadAuth => &self.dropped_bad_auth,
            Error::StalePacket { .. } | Error::ReplayedPacket => &self.dropped_replay,
            _ => &self.dropped_malformed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Faults injected into outgoing packets, for chaos tests. The default injects none.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Faults {
    /// Probability that a packet is dropped (1.0 cuts the node's outgoing gossip).
    pub loss: f64,
    /// Delay added to every packet.
    pub delay: Duration,
    /// Probability that a packet is sent twice (the receiver refuses the copy as a replay).
    pub duplicate: f64,
}

impl Faults {
    fn is_none(&self) -> bool {
        self.loss <= 0.0 && self.delay.is_zero() && self.duplicate <= 0.0
    }
}

/// What a transport shares with its sockets and with whoever reads the stats.
#[derive(Debug, Default)]
struct Shared {
    stats: StatsCounters,
    faults: Mutex<Faults>,
    budget: Mutex<DigestBudget>,
}

/// A chitchat [`Transport`] whose packets are sealed under a [`PacketKey`].
pub struct SealedTransport {
    key: PacketKey,
    shared: Arc<Shared>,
    /// A socket bound in advance (so that port 0 works and bind errors are typed), used by the
    /// first `open` on its address.
    bound: Mutex<Option<tokio::net::UdpSocket>>,
    /// The chitchat id of the node this transport serves, if known ([`check_envelope`]).
    local: Option<ChitchatId>,
}

impl SealedTransport {
    /// A transport sealing under `key`, binding its socket when chitchat opens it.
    pub fn new(key: PacketKey) -> SealedTransport {
        SealedTransport {
            key,
            shared: Arc::default(),
            bound: Mutex::new(None),
            local: None,
        }
    }

    /// A transport sealing under `key` that gives chitchat the already bound `socket`.
    pub fn with_socket(key: PacketKey, socket: tokio::net::UdpSocket) -> SealedTransport {
        SealedTransport {
            key,
            shared: Arc::default(),
            bound: Mutex::new(Some(socket)),
            local: None,
        }
    }

    /// Tells the transport which node it serves, so that deltas about that very node are
    /// checked as such ([`check_envelope`]).
    pub fn for_node(mut self, local: ChitchatId) -> SealedTransport {
        self.local = Some(local);
        self
    }

    /// A handle on the counters and faults of this transport's sockets, readable at run time.
    pub fn control(&self) -> TransportControl {
        TransportControl {
            shared: self.shared.clone(),
        }
    }

    fn take_bound(&self, listen_addr: SocketAddr) -> Option<tokio::net::UdpSocket> {
        let mut bound = self
            .bound
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let matches = bound
            .as_ref()
            .and_then(|socket| socket.local_addr().ok())
            .is_some_and(|addr| addr == listen_addr || listen_addr.port() == 0);
        if !matches {
            return None;
        }
        bound.take()
    }
}

/// Reads the stats and sets the faults of a [`SealedTransport`]'s sockets. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TransportControl {
    shared: Arc<Shared>,
}

impl TransportControl {
    /// The counters so far.
    pub fn stats(&self) -> GossipStats {
        self.shared.stats.snapshot()
    }

    /// Reports the ids of the node's own chitchat digest now ([`DigestBudget::reset`]).
    pub fn reset_digest(&self, ids: impl IntoIterator<Item = ChitchatId>) {
        self.shared
            .budget
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .reset(ids);
    }

    /// Sets the faults injected into outgoing packets from now on.
    pub fn set_faults(&self, faults: Faults) {
        *self
            .shared
            .faults
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = faults;
    }

    /// The faults currently injected.
    pub fn faults(&self) -> Faults {
        *self
            .shared
            .faults
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

#[async_trait]
impl Transport for SealedTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let wire = match self.take_bound(listen_addr) {
            Some(socket) => socket,
            None => tokio::net::UdpSocket::bind(listen_addr)
                .await
                .with_context(|| format!("cannot bind the gossip socket on {listen_addr}"))?,
        };
        Ok(Box::new(self.socket_on(wire).await?))
    }
}

impl SealedTransport {
    async fn socket_on(&self, wire: tokio::net::UdpSocket) -> anyhow::Result<SealedSocket> {
        let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let codec = UdpSocket::open(loopback).await?;
        let codec_addr = codec.local_addr()?;
        let tap = tokio::net::UdpSocket::bind(loopback)
            .await
            .context("cannot bind the gossip codec tap")?;
        let tap_addr = tap.local_addr()?;
        Ok(SealedSocket {
            wire: Arc::new(wire),
            codec,
            codec_addr,
            tap,
            tap_addr,
            key: self.key.clone(),
            local: self.local.clone(),
            sender: fastrand::u64(..),
            counter: 0,
            replay: ReplayWindow::default(),
            shared: self.shared.clone(),
            buffer: vec![0u8; RECV_BUFFER_LEN].into_boxed_slice(),
            pending: None,
            codec_dirty: false,
            tap_dirty: false,
        })
    }
}

/// A packet opened and handed to the codec, not yet read back as an envelope.
#[derive(Debug, Clone, Copy)]
struct Pending {
    from: SocketAddr,
    sealed_len: usize,
    /// The plaintext's length: what the codec reports for it (a late answer to an earlier
    /// plaintext of another length is skipped).
    plaintext_len: usize,
    /// Until when the codec's answer is awaited. Fixed when the plaintext is handed over:
    /// chitchat drops `recv` at every gossip round, and a wait restarted at each call would
    /// never end when the gossip interval is not longer than [`CODEC_WAIT`].
    deadline: tokio::time::Instant,
}

struct SealedSocket {
    wire: Arc<tokio::net::UdpSocket>,
    codec: UdpSocket,
    codec_addr: SocketAddr,
    tap: tokio::net::UdpSocket,
    tap_addr: SocketAddr,
    key: PacketKey,
    local: Option<ChitchatId>,
    sender: u64,
    counter: u64,
    replay: ReplayWindow,
    shared: Arc<Shared>,
    buffer: Box<[u8]>,
    /// Set while a plaintext sits in the codec: chitchat may drop `recv` at any await, and
    /// the next call must read that plaintext as coming from this peer.
    pending: Option<Pending>,
    /// Set when the codec or the tap may hold a plaintext nobody waits for any more.
    codec_dirty: bool,
    tap_dirty: bool,
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

impl SealedSocket {
    /// Encodes an envelope with chitchat's own codec, through the tap.
    async fn encode(&mut self, envelope: ChitchatEnvelope) -> anyhow::Result<Vec<u8>> {
        if self.tap_dirty {
            // A late plaintext of an earlier, timed out encoding must not pass for this one.
            while self.tap.try_recv_from(&mut self.buffer).is_ok() {}
            self.tap_dirty = false;
        }
        self.codec.send(self.tap_addr, envelope).await?;
        loop {
            let received =
                tokio::time::timeout(CODEC_WAIT, self.tap.recv_from(&mut self.buffer)).await;
            let Ok(received) = received else {
                self.tap_dirty = true;
                anyhow::bail!("the gossip codec did not answer");
            };
            let (len, from) = received?;
            if from == self.codec_addr {
                return Ok(self.buffer[..len].to_vec());
            }
        }
    }

    async fn send_sealed(&self, to: SocketAddr, packet: Vec<u8>) -> anyhow::Result<()> {
        let faults = *self
            .shared
            .faults
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if faults.is_none() {
            self.wire.send_to(&packet, to).await?;
            self.shared.stats.count_sent(packet.len());
            return Ok(());
        }
        if fastrand::f64() < faults.loss {
            return Ok(());
        }
        let copies = if fastrand::f64() < faults.duplicate {
            2
        } else {
            1
        };
        if faults.delay.is_zero() {
            for _ in 0..copies {
                self.wire.send_to(&packet, to).await?;
                self.shared.stats.count_sent(packet.len());
            }
            return Ok(());
        }
        let wire = self.wire.clone();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(faults.delay).await;
            for _ in 0..copies {
                if wire.send_to(&packet, to).await.is_ok() {
                    shared.stats.count_sent(packet.len());
                }
            }
        });
        Ok(())
    }

    /// Reads back the plaintext handed to the codec as an envelope from the pending peer.
    async fn decode_pending(&mut self, pending: Pending) -> anyhow::Result<Option<RecvOutcome>> {
        loop {
            let received = tokio::time::timeout_at(pending.deadline, self.codec.recv()).await;
            let outcome = match received {
                Ok(outcome) => outcome?,
                Err(_) => {
                    // chitchat refused bytes check_envelope accepted (or, on a host stalled
                    // for longer than the wait, they are still to come: drained later).
                    self.pending = None;
                    self.codec_dirty = true;
                    self.shared
                        .stats
                        .dropped_malformed
                        .fetch_add(1, Ordering::Relaxed);
                    return Ok(None);
                }
            };
            if outcome.from_addr != self.tap_addr
                || outcome.num_bytes_received != pending.plaintext_len
            {
                continue;
            }
            self.pending = None;
            let stats = &self.shared.stats;
            stats.received_packets.fetch_add(1, Ordering::Relaxed);
            stats
                .received_bytes
                .fetch_add(pending.sealed_len as u64, Ordering::Relaxed);
            return Ok(Some(RecvOutcome {
                from_addr: pending.from,
                envelope: outcome.envelope,
                num_bytes_received: pending.sealed_len,
            }));
        }
    }

    /// Receives one datagram from the wire and hands its plaintext to the codec if it passes.
    ///
    /// Every await comes before the datagram is taken off the wire: chitchat drops `recv` at
    /// every gossip round, and a datagram read but not yet handed over would be lost uncounted.
    async fn receive_sealed(&mut self) -> anyhow::Result<()> {
        if self.codec_dirty {
            // A late plaintext of an earlier, timed out decoding must not pass for the next
            // one. Nothing else is sent to the codec meanwhile, so draining it here is enough.
            while let Ok(Ok(_)) = tokio::time::timeout(Duration::ZERO, self.codec.recv()).await {}
            self.codec_dirty = false;
        }
        // So that handing the plaintext over below cannot fail for want of a readiness event
        // not delivered yet (a fresh socket answers WouldBlock).
        self.tap
            .writable()
            .await
            .context("the gossip codec tap failed")?;
        let (len, from) = match self.wire.recv_from(&mut self.buffer).await {
            Ok(received) => received,
            Err(error) if is_transient(&error) => return Ok(()),
            Err(error) => return Err(error).context("cannot receive gossip"),
        };
        let opened = accept_packet(
            &self.key,
            &mut self.replay,
            self.local.as_ref(),
            &mut self
                .shared
                .budget
                .lock()
                .unwrap_or_else(|poison| poison.into_inner()),
            &self.buffer[..len],
            unix_ms_now(),
        );
        let opened = match opened {
            Ok(opened) => opened,
            Err(error) => {
                self.shared.stats.count_drop(&error);
                return Ok(());
            }
        };
        // No await between handing the plaintext over and marking it pending, so a cancelled
        // `recv` cannot lose track of whose it is.
        match self.tap.try_send_to(&opened.plaintext, self.codec_addr) {
            Ok(_) => {
                self.pending = Some(Pending {
                    from,
                    sealed_len: len,
                    plaintext_len: opened.plaintext.len(),
                    deadline: tokio::time::Instant::now() + CODEC_WAIT,
                });
            }
            Err(_) => {
                self.shared
                    .stats
                    .dropped_malformed
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

fn is_transient(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::OutOfMemory
            | std::io::ErrorKind::WouldBlock
            | std::io::ErrorKind::Interrupted
    )
}

#[async_trait]
impl Socket for SealedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.wire
            .local_addr()
            .context("cannot read the gossip socket address")
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let plaintext = self.encode(envelope).await?;
        self.counter = self.counter.wrapping_add(1);
        let packet = seal_packet(
            &self.key,
            self.sender,
            self.counter,
            unix_ms_now(),
            &plaintext,
        )?;
        let num_bytes_sent = packet.len();
        self.send_sealed(to, packet).await?;
        Ok(SendOutcome { num_bytes_sent })
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            if let Some(pending) = self.pending {
                if let Some(outcome) = self.decode_pending(pending).await? {
                    return Ok(outcome);
                }
                continue;
            }
            self.receive_sealed().await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];
    const NOW: u64 = 1_700_000_000_000;

    fn sealed(key: &PacketKey, counter: u64, plaintext: &[u8]) -> Vec<u8> {
        seal_packet(key, 42, counter, NOW, plaintext).expect("seal")
    }

    #[test]
    fn a_sealed_packet_opens_to_its_plaintext() {
        let key = PacketKey::new(&KEY, "lab");
        let packet = sealed(&key, 1, b"hello gossip");
        assert_eq!(packet.len(), HEADER_LEN + 12 + TAG_LEN);
        assert!(!packet.windows(5).any(|window| window == b"hello"));
        let opened = open_packet(&key, &packet, NOW + 10).expect("open");
        assert_eq!(opened.plaintext, b"hello gossip");
        assert_eq!(opened.sent_at_ms, NOW);
    }

    #[test]
    fn another_key_fails_authentication() {
        let packet = sealed(&PacketKey::new(&KEY, "lab"), 1, b"x");
        let other = PacketKey::new(&[8; 32], "lab");
        assert!(matches!(
            open_packet(&other, &packet, NOW),
            Err(Error::BadAuth)
        ));
    }

    #[test]
    fn another_cluster_fails_authentication() {
        let packet = sealed(&PacketKey::new(&KEY, "lab"), 1, b"x");
        let other = PacketKey::new(&KEY, "lab2");
        assert!(matches!(
            open_packet(&other, &packet, NOW),
            Err(Error::BadAuth)
        ));
    }

    #[test]
    fn an_altered_packet_fails_authentication() {
        let key = PacketKey::new(&KEY, "lab");
        let packet = sealed(&key, 1, b"some payload");
        for index in 0..packet.len() {
            let mut altered = packet.clone();
            altered[index] ^= 0x01;
            assert!(open_packet(&key, &altered, NOW).is_err(), "byte {index}");
        }
    }

    #[test]
    fn a_stale_or_future_packet_is_refused() {
        let key = PacketKey::new(&KEY, "lab");
        let packet = sealed(&key, 1, b"x");
        let age = MAX_PACKET_AGE.as_millis() as u64;
        assert!(open_packet(&key, &packet, NOW + age).is_ok());
        assert!(matches!(
            open_packet(&key, &packet, NOW + age + 1),
            Err(Error::StalePacket { .. })
        ));
        assert!(matches!(
            open_packet(&key, &packet, NOW - age - 1),
            Err(Error::StalePacket { .. })
        ));
    }

    #[test]
    fn a_replayed_packet_is_refused() {
        let key = PacketKey::new(&KEY, "lab");
        let mut window = ReplayWindow::default();
        let first = open_packet(&key, &sealed(&key, 1, b"x"), NOW).expect("open");
        let second = open_packet(&key, &sealed(&key, 2, b"x"), NOW).expect("open");
        window.check(&first, NOW).expect("first");
        window.check(&second, NOW).expect("second");
        assert!(matches!(
            window.check(&first, NOW + 1),
            Err(Error::ReplayedPacket)
        ));
        // Past the window the nonce is forgotten: open_packet refuses the packet as stale.
        let later = NOW + MAX_PACKET_AGE.as_millis() as u64 + 1;
        let third = open_packet(
            &key,
            &seal_packet(&key, 42, 3, later, b"x").expect("seal"),
            later,
        )
        .expect("open");
        window.check(&third, later).expect("third");
        assert_eq!(window.len(), 1);
    }

    #[test]
    fn the_replay_window_is_bounded() {
        let mut window = ReplayWindow::default();
        for counter in 0..(MAX_REMEMBERED_NONCES as u64 + 10) {
            let mut nonce = [0u8; NONCE_LEN];
            nonce[16..].copy_from_slice(&counter.to_le_bytes());
            let opened = OpenedPacket {
                nonce,
                sent_at_ms: NOW,
                plaintext: Vec::new(),
            };
            window.check(&opened, NOW).expect("fresh nonce");
        }
        assert_eq!(window.len(), MAX_REMEMBERED_NONCES);
    }

    #[test]
    fn truncated_and_oversized_packets_are_malformed() {
        let key = PacketKey::new(&KEY, "lab");
        let packet = sealed(&key, 1, b"payload");
        for len in 0..HEADER_LEN + TAG_LEN {
            assert!(matches!(
                open_packet(&key, &packet[..len], NOW),
                Err(Error::PacketTooShort(_))
            ));
        }
        assert!(matches!(
            open_packet(&key, &packet[..packet.len() - 1], NOW),
            Err(Error::BadAuth)
        ));
        let huge = vec![PACKET_VERSION; MAX_PACKET_LEN + 1];
        assert!(matches!(
            open_packet(&key, &huge, NOW),
            Err(Error::PacketTooLarge(_))
        ));
        assert!(matches!(
            seal_packet(&key, 1, 1, NOW, &huge),
            Err(Error::PacketTooLarge(_))
        ));
        let mut other_version = packet.clone();
        other_version[0] = 9;
        assert!(matches!(
            open_packet(&key, &other_version, NOW),
            Err(Error::UnknownPacketVersion(9))
        ));
    }

    #[test]
    fn open_never_panics_on_random_bytes() {
        let key = PacketKey::new(&KEY, "lab");
        let mut rng = fastrand::Rng::with_seed(1);
        for _ in 0..20_000 {
            let len = rng.usize(..200);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            if rng.bool() && !bytes.is_empty() {
                bytes[0] = PACKET_VERSION;
            }
            if rng.bool() && bytes.len() >= HEADER_LEN {
                bytes[9..17].copy_from_slice(&NOW.to_le_bytes());
            }
            assert!(open_packet(&key, &bytes, rng.u64(..)).is_err());
            assert!(open_packet(&key, &bytes, NOW).is_err());
        }
    }

    #[test]
    fn accept_packet_checks_the_content_after_the_replay_window() {
        let key = PacketKey::new(&KEY, "lab");
        let mut window = ReplayWindow::default();
        let bad_cluster = [0x53, 0xB0, 0, 3];
        let good = sealed(&key, 1, &bad_cluster);
        assert!(
            accept_packet(
                &key,
                &mut window,
                None,
                &mut DigestBudget::default(),
                &good,
                NOW
            )
            .is_ok()
        );
        let garbage = sealed(&key, 2, b"not chitchat");
        assert!(matches!(
            accept_packet(
                &key,
                &mut window,
                None,
                &mut DigestBudget::default(),
                &garbage,
                NOW
            ),
            Err(Error::BadEnvelope(_))
        ));
        // Its replay is a replay.
        assert!(matches!(
            accept_packet(
                &key,
                &mut window,
                None,
                &mut DigestBudget::default(),
                &garbage,
                NOW
            ),
            Err(Error::ReplayedPacket)
        ));
    }

    async fn loopback_socket(transport: &SealedTransport) -> SealedSocket {
        let wire = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        transport.socket_on(wire).await.expect("socket")
    }

    /// A plaintext the codec never answers (as if chitchat refused what check_envelope
    /// accepted) must not stop reception, even when every `recv` is cancelled sooner than the
    /// codec wait, as chitchat's server does at each gossip round.
    #[tokio::test]
    async fn a_plaintext_the_codec_never_answers_does_not_stop_reception() {
        let transport = SealedTransport::new(PacketKey::new(&KEY, "lab"));
        let mut receiver = loopback_socket(&transport).await;
        let mut sender = loopback_socket(&transport).await;
        let to = receiver.local_addr().expect("addr");
        // Hand the codec garbage as receive_sealed would have, had the check let it through.
        receiver
            .tap
            .send_to(b"not chitchat", receiver.codec_addr)
            .await
            .expect("tap sends");
        receiver.pending = Some(Pending {
            from: to,
            sealed_len: 1,
            plaintext_len: 12,
            deadline: tokio::time::Instant::now() + CODEC_WAIT,
        });
        let envelope = ChitchatEnvelope {
            version: chitchat::ProtocolVersion::V0,
            message: chitchat::ChitchatMessage::BadCluster,
        };
        sender.send(to, envelope).await.expect("send");
        let started = tokio::time::Instant::now();
        let outcome = loop {
            let attempt = tokio::time::timeout(CODEC_WAIT / 2, receiver.recv()).await;
            if let Ok(outcome) = attempt {
                break outcome.expect("recv");
            }
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "reception is stuck: {:?}",
                transport.control().stats()
            );
        };
        assert_eq!(outcome.from_addr, sender.local_addr().expect("addr"));
        assert_eq!(
            outcome.envelope.message,
            chitchat::ChitchatMessage::BadCluster
        );
        let stats = transport.control().stats();
        assert_eq!((stats.dropped_malformed, stats.received_packets), (1, 1));
    }

    fn id(name: &str) -> ChitchatId {
        ChitchatId::new(name, 1, SocketAddr::from(([127, 0, 0, 1], 9000)))
    }

    #[test]
    fn the_digest_budget_counts_each_node_once_and_refuses_overflow() {
        let mut budget = DigestBudget::default();
        budget.reset([id("n0"), id("n1")]);
        let base = budget.digest_len();
        assert_eq!(base, 2 + 2 * digest_entry_len(&id("n0")));
        // Known ids and duplicates cost nothing more.
        budget
            .admit(&[id("n0"), id("n2"), id("n2"), id("n1")])
            .expect("fits");
        assert_eq!(budget.digest_len(), base + digest_entry_len(&id("n2")));
        budget.admit(&[id("n2")]).expect("already counted");
        assert_eq!(budget.digest_len(), base + digest_entry_len(&id("n2")));
        // Once chitchat lists it, it is known; ids it dropped are forgotten after the grace.
        budget.reset([id("n0"), id("n1"), id("n2")]);
        assert_eq!(budget.digest_len(), base + digest_entry_len(&id("n2")));
        let huge = id(&"g".repeat(MAX_DIGEST_LEN));
        assert!(matches!(budget.admit(&[huge]), Err(Error::BadEnvelope(_))));
        let many: Vec<ChitchatId> = (0..2_000).map(|index| id(&format!("g{index}"))).collect();
        let fitting = many
            .iter()
            .take_while(|ghost| budget.admit(std::slice::from_ref(*ghost)).is_ok())
            .count();
        assert!((1_000..2_000).contains(&fitting), "{fitting}");
        assert!(budget.digest_len() <= MAX_DIGEST_LEN);
        assert!(budget.admit(&many).is_err());
    }

    #[test]
    fn stats_count_drops_by_reason() {
        let counters = StatsCounters::default();
        counters.count_drop(&Error::BadAuth);
        counters.count_drop(&Error::ReplayedPacket);
        counters.count_drop(&Error::StalePacket { age_ms: 9 });
        counters.count_drop(&Error::PacketTooShort(3));
        counters.count_sent(100);
        let stats = counters.snapshot();
        assert_eq!(stats.dropped_bad_auth, 1);
        assert_eq!(stats.dropped_replay, 2);
        assert_eq!(stats.dropped_malformed, 1);
        assert_eq!((stats.sent_packets, stats.sent_bytes), (1, 100));
    }
}
