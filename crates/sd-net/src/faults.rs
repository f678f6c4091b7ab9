//! Packet-level fault injection, for chaos tests (there is no `tc netem` to rely on).
//!
//! The endpoint's UDP socket is quinn's own tokio socket wrapped in a `FaultySocket`: every
//! datagram quinn sends (handshakes, requests, replies, acknowledgements, keep-alives) passes
//! through it and may be lost, duplicated or delayed as the current [`Faults`] say. Receiving
//! is untouched. QUIC reacts as on a bad network: it retransmits what was lost, discards
//! duplicates and adapts its timers to the delay.
//!
//! A transmit that carries several GSO segments is treated as one unit: it is lost, duplicated
//! or delayed whole, and counted once.
//!
//! With no fault set a datagram costs one relaxed atomic load more than quinn's own socket.

use std::{
    fmt,
    io::{self, IoSliceMut},
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError, Weak,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use quinn::{
    AsyncUdpSocket, UdpPoller,
    udp::{EcnCodepoint, RecvMeta, Transmit},
};
use tokio::{sync::mpsc, time::Instant};

use crate::stats::Counters;

/// Faults injected into outgoing UDP datagrams of the QUIC endpoint, for chaos tests. The
/// default injects none.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Faults {
    /// Probability (0.0..=1.0) that an outgoing datagram is dropped.
    pub loss: f64,
    /// Delay added to every outgoing datagram.
    pub delay: Duration,
    /// Probability that an outgoing datagram is sent twice.
    pub duplicate: f64,
}

impl Faults {
    /// Whether these faults leave every datagram alone.
    pub(crate) fn is_none(&self) -> bool {
        !can_fire(self.loss) && self.delay.is_zero() && !can_fire(self.duplicate)
    }
}

/// Whether a fault of this probability can ever fire (zero, negative and NaN ones never do).
fn can_fire(probability: f64) -> bool {
    probability > 0.0
}

/// How many times a delayed datagram is offered to a socket that is not writable.
const LATE_SEND_ATTEMPTS: usize = 3;

/// What happens to one outgoing transmit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Not sent at all.
    Lost,
    /// Sent `copies` times (1 or 2), after `delay`.
    Sent {
        /// How many copies go out.
        copies: u8,
        /// How long they wait first.
        delay: Duration,
    },
}

/// Draws the fate of one transmit under `faults`; `random` yields numbers in `0.0..1.0`.
/// Probabilities above 1 act as 1; zero, negative or NaN ones never fire.
pub(crate) fn fate(faults: &Faults, mut random: impl FnMut() -> f64) -> Fate {
    if can_fire(faults.loss) && random() < faults.loss {
        return Fate::Lost;
    }
    let copies = if can_fire(faults.duplicate) && random() < faults.duplicate {
        2
    } else {
        1
    };
    Fate::Sent {
        copies,
        delay: faults.delay,
    }
}

/// The faults currently set, shared by an endpoint and its socket.
#[derive(Debug, Default)]
pub(crate) struct FaultControl {
    /// `true` when some fault is set: the only thing the hot path reads.
    active: AtomicBool,
    faults: Mutex<Faults>,
}

impl FaultControl {
    /// Sets the faults applied to datagrams sent from now on.
    pub(crate) fn set(&self, faults: Faults) {
        let mut current = self.faults.lock().unwrap_or_else(PoisonError::into_inner);
        *current = faults;
        // Written under the lock, so concurrent setters cannot leave the flag stale.
        self.active.store(!faults.is_none(), Ordering::Relaxed);
    }

    /// The faults currently set.
    pub(crate) fn get(&self) -> Faults {
        *self.faults.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The faults to apply to one datagram, or `None` (the common case) when none are set.
    fn current(&self) -> Option<Faults> {
        if self.active.load(Ordering::Relaxed) {
            Some(self.get())
        } else {
            None
        }
    }
}

/// An owned copy of a [`Transmit`], kept until its delayed send.
#[derive(Debug, Clone, PartialEq)]
struct Datagram {
    destination: SocketAddr,
    ecn: Option<EcnCodepoint>,
    contents: Vec<u8>,
    segment_size: Option<usize>,
    src_ip: Option<IpAddr>,
}

impl Datagram {
    fn copy(transmit: &Transmit<'_>) -> Self {
        Self {
            destination: transmit.destination,
            ecn: transmit.ecn,
            contents: transmit.contents.to_vec(),
            segment_size: transmit.segment_size,
            src_ip: transmit.src_ip,
        }
    }

    fn transmit(&self) -> Transmit<'_> {
        Transmit {
            destination: self.destination,
            ecn: self.ecn,
            contents: &self.contents,
            segment_size: self.segment_size,
            src_ip: self.src_ip,
        }
    }
}

/// quinn's UDP socket with [`Faults`] applied to what it sends.
pub(crate) struct FaultySocket {
    inner: Arc<dyn AsyncUdpSocket>,
    control: Arc<FaultControl>,
    counters: Arc<Counters>,
    /// The delay line: datagrams and when they are due, sent in order by one task.
    delayed: mpsc::UnboundedSender<(Instant, Datagram)>,
}

impl fmt::Debug for FaultySocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultySocket")
            .field("inner", &self.inner)
            .field("faults", &self.control.get())
            .finish_non_exhaustive()
    }
}

impl FaultySocket {
    /// Wraps `inner`, applying the faults `control` holds and counting them in `counters`.
    /// Spawns the delay line's task, which ends once the socket is dropped (what it still
    /// holds is lost, as with a host that goes down): must be called within a tokio runtime.
    pub(crate) fn new(
        inner: Arc<dyn AsyncUdpSocket>,
        control: Arc<FaultControl>,
        counters: Arc<Counters>,
    ) -> Self {
        let (delayed, line) = mpsc::unbounded_channel();
        tokio::spawn(delay_line(
            Arc::downgrade(&inner),
            line,
            Arc::clone(&counters),
        ));
        Self {
            inner,
            control,
            counters,
            delayed,
        }
    }

    /// Sends `transmit` under `faults`: `Ok` also when the datagram was lost on purpose.
    fn send_faulty(&self, transmit: &Transmit<'_>, faults: &Faults) -> io::Result<()> {
        let counters = &self.counters;
        match fate(faults, fastrand::f64) {
            Fate::Lost => {
                Counters::add(&counters.fault_dropped_datagrams, 1);
                Ok(())
            }
            Fate::Sent { copies, delay } if delay.is_zero() => {
                // A full socket is reported to quinn, which retries: that is no injected fault.
                self.inner.try_send(transmit)?;
                if copies > 1 && self.inner.try_send(transmit).is_ok() {
                    Counters::add(&counters.fault_duplicated_datagrams, 1);
                }
                Ok(())
            }
            Fate::Sent { copies, delay } => {
                let due = Instant::now() + delay;
                let datagram = Datagram::copy(transmit);
                if copies > 1 {
                    Counters::add(&counters.fault_duplicated_datagrams, 1);
                    self.delay(due, datagram.clone());
                }
                self.delay(due, datagram);
                Ok(())
            }
        }
    }

    fn delay(&self, due: Instant, datagram: Datagram) {
        if self.delayed.send((due, datagram)).is_ok() {
            Counters::add(&self.counters.fault_delayed_datagrams, 1);
        } else {
            // The delay line is gone (the runtime is shutting down): the datagram is lost.
            Counters::add(&self.counters.fault_dropped_datagrams, 1);
        }
    }
}

impl AsyncUdpSocket for FaultySocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Arc::clone(&self.inner).create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        match self.control.current() {
            None => self.inner.try_send(transmit),
            Some(faults) => self.send_faulty(transmit, &faults),
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// Sends the delayed datagrams in order, each once it is due; a datagram that cannot be sent
/// is dropped and counted as lost. Holds the socket only while sending, so that a closed
/// endpoint releases its address at once; ends when the socket is gone.
async fn delay_line(
    socket: Weak<dyn AsyncUdpSocket>,
    mut line: mpsc::UnboundedReceiver<(Instant, Datagram)>,
    counters: Arc<Counters>,
) {
    while let Some((due, datagram)) = line.recv().await {
        if due > Instant::now() {
            tokio::time::sleep_until(due).await;
        }
        let Some(socket) = socket.upgrade() else {
            return;
        };
        if !send_late(socket, &datagram).await {
            Counters::add(&counters.fault_dropped_datagrams, 1);
        }
    }
}

/// Sends `datagram` now, waiting (a few times at most) for a full socket to drain.
async fn send_late(socket: Arc<dyn AsyncUdpSocket>, datagram: &Datagram) -> bool {
    let mut poller = None;
    for _ in 0..LATE_SEND_ATTEMPTS {
        match socket.try_send(&datagram.transmit()) {
            Ok(()) => return true,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                let poller = poller.get_or_insert_with(|| Arc::clone(&socket).create_io_poller());
                let writable = std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx)).await;
                if writable.is_err() {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use quinn::Runtime as _;

    use super::*;

    /// A source of "random" numbers that replays `values`.
    fn replay(values: &[f64]) -> impl FnMut() -> f64 + '_ {
        let mut values = values.iter().copied();
        move || values.next().expect("more draws than expected")
    }

    #[test]
    fn no_faults_by_default() {
        let faults = Faults::default();
        assert!(faults.is_none());
        assert_eq!(faults.loss, 0.0);
        assert_eq!(faults.duplicate, 0.0);
        assert!(faults.delay.is_zero());
        // Nothing is drawn when nothing can happen.
        assert_eq!(
            fate(&faults, replay(&[])),
            Fate::Sent {
                copies: 1,
                delay: Duration::ZERO
            }
        );
    }

    #[test]
    fn any_single_fault_makes_faults_active() {
        let delay = Duration::from_millis(1);
        for faults in [
            Faults {
                loss: 0.1,
                ..Faults::default()
            },
            Faults {
                duplicate: 0.1,
                ..Faults::default()
            },
            Faults {
                delay,
                ..Faults::default()
            },
        ] {
            assert!(!faults.is_none(), "{faults:?}");
        }
        assert!(
            Faults {
                loss: f64::NAN,
                duplicate: -1.0,
                ..Faults::default()
            }
            .is_none()
        );
    }

    #[test]
    fn fate_follows_the_draws() {
        let faults = Faults {
            loss: 0.3,
            delay: Duration::from_millis(20),
            duplicate: 0.5,
        };
        let delay = faults.delay;
        assert_eq!(fate(&faults, replay(&[0.29])), Fate::Lost);
        assert_eq!(
            fate(&faults, replay(&[0.3, 0.49])),
            Fate::Sent { copies: 2, delay }
        );
        assert_eq!(
            fate(&faults, replay(&[0.9, 0.5])),
            Fate::Sent { copies: 1, delay }
        );
    }

    #[test]
    fn certain_faults_always_fire() {
        let lossy = Faults {
            loss: 1.0,
            ..Faults::default()
        };
        let doubled = Faults {
            duplicate: 2.0,
            ..Faults::default()
        };
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..1_000 {
            assert_eq!(fate(&lossy, || rng.f64()), Fate::Lost);
            assert_eq!(
                fate(&doubled, || rng.f64()),
                Fate::Sent {
                    copies: 2,
                    delay: Duration::ZERO
                }
            );
        }
    }

    #[test]
    fn loss_rate_matches_its_probability() {
        let faults = Faults {
            loss: 0.3,
            ..Faults::default()
        };
        let mut rng = fastrand::Rng::with_seed(42);
        let lost = (0..10_000)
            .filter(|_| fate(&faults, || rng.f64()) == Fate::Lost)
            .count();
        assert!((2_700..3_300).contains(&lost), "{lost} of 10000 lost");
    }

    #[test]
    fn control_tracks_whether_any_fault_is_set() {
        let control = FaultControl::default();
        assert_eq!(control.current(), None);
        let faults = Faults {
            loss: 0.5,
            ..Faults::default()
        };
        control.set(faults);
        assert_eq!(control.current(), Some(faults));
        assert_eq!(control.get(), faults);
        control.set(Faults::default());
        assert_eq!(control.current(), None);
        assert_eq!(control.get(), Faults::default());
    }

    /// A faulty socket on loopback, its control and counters, and a plain receiver.
    fn sockets() -> (
        Arc<FaultySocket>,
        Arc<FaultControl>,
        Arc<Counters>,
        tokio::net::UdpSocket,
    ) {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let inner = quinn::TokioRuntime
            .wrap_udp_socket(std::net::UdpSocket::bind(loopback).expect("bind"))
            .expect("wrap");
        let control = Arc::new(FaultControl::default());
        let counters = Arc::new(Counters::default());
        let socket = Arc::new(FaultySocket::new(
            inner,
            Arc::clone(&control),
            Arc::clone(&counters),
        ));
        let receiver = std::net::UdpSocket::bind(loopback).expect("bind receiver");
        receiver.set_nonblocking(true).expect("non-blocking");
        let receiver = tokio::net::UdpSocket::from_std(receiver).expect("tokio receiver");
        (socket, control, counters, receiver)
    }

    /// Sends `payload` to `to` through `socket`, as quinn would: waiting for writability.
    async fn send(socket: &Arc<FaultySocket>, to: SocketAddr, payload: &[u8]) {
        let transmit = Transmit {
            destination: to,
            ecn: None,
            contents: payload,
            segment_size: None,
            src_ip: None,
        };
        let mut poller = Arc::clone(socket).create_io_poller();
        loop {
            match socket.try_send(&transmit) {
                Ok(()) => return,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx))
                        .await
                        .expect("writable");
                }
                Err(error) => panic!("try_send: {error}"),
            }
        }
    }

    /// The next datagram `receiver` gets within `wait`, if any.
    async fn receive(receiver: &tokio::net::UdpSocket, wait: Duration) -> Option<Vec<u8>> {
        let mut buffer = [0; 64];
        let received = tokio::time::timeout(wait, receiver.recv(&mut buffer)).await;
        let length = received.ok()?.expect("recv");
        Some(buffer[..length].to_vec())
    }

    #[tokio::test]
    async fn the_socket_loses_duplicates_and_delays_datagrams() {
        let (socket, control, counters, receiver) = sockets();
        let to = receiver.local_addr().expect("receiver address");
        let short = Duration::from_millis(50);

        send(&socket, to, b"clean").await;
        assert_eq!(
            receive(&receiver, short).await.as_deref(),
            Some(&b"clean"[..])
        );

        control.set(Faults {
            loss: 1.0,
            ..Faults::default()
        });
        send(&socket, to, b"lost").await;
        assert_eq!(receive(&receiver, short).await, None);

        control.set(Faults {
            duplicate: 1.0,
            ..Faults::default()
        });
        send(&socket, to, b"twice").await;
        for _ in 0..2 {
            assert_eq!(
                receive(&receiver, short).await.as_deref(),
                Some(&b"twice"[..])
            );
        }

        let delay = Duration::from_millis(30);
        control.set(Faults {
            delay,
            ..Faults::default()
        });
        let sent = std::time::Instant::now();
        send(&socket, to, b"first").await;
        send(&socket, to, b"second").await;
        // The delay line keeps the order.
        let wait = Duration::from_secs(2);
        assert_eq!(
            receive(&receiver, wait).await.as_deref(),
            Some(&b"first"[..])
        );
        assert!(sent.elapsed() >= delay);
        assert_eq!(
            receive(&receiver, wait).await.as_deref(),
            Some(&b"second"[..])
        );

        control.set(Faults::default());
        send(&socket, to, b"clean again").await;
        assert_eq!(
            receive(&receiver, short).await.as_deref(),
            Some(&b"clean again"[..])
        );

        let stats = counters.snapshot(0);
        assert_eq!(stats.fault_dropped_datagrams, 1);
        assert_eq!(stats.fault_duplicated_datagrams, 1);
        assert_eq!(stats.fault_delayed_datagrams, 2);
    }

    #[tokio::test]
    async fn a_dropped_socket_releases_its_address_despite_delayed_datagrams() {
        let (socket, control, _counters, receiver) = sockets();
        let addr = socket.local_addr().expect("address");
        control.set(Faults {
            delay: Duration::from_secs(10),
            ..Faults::default()
        });
        send(
            &socket,
            receiver.local_addr().expect("receiver address"),
            b"late",
        )
        .await;
        drop(socket);
        std::net::UdpSocket::bind(addr).expect("the address is free again");
    }

    #[test]
    fn a_copied_transmit_is_the_same_transmit() {
        let contents = [1, 2, 3, 4, 5, 6];
        let transmit = Transmit {
            destination: SocketAddr::from(([127, 0, 0, 1], 4433)),
            ecn: Some(EcnCodepoint::Ect0),
            contents: &contents,
            segment_size: Some(3),
            src_ip: Some(IpAddr::from([127, 0, 0, 2])),
        };
        let copy = Datagram::copy(&transmit);
        let again = copy.transmit();
        assert_eq!(again.destination, transmit.destination);
        assert_eq!(again.ecn, transmit.ecn);
        assert_eq!(again.contents, transmit.contents);
        assert_eq!(again.segment_size, transmit.segment_size);
        assert_eq!(again.src_ip, transmit.src_ip);
    }
}
