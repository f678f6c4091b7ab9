//! Calls between endpoints: round trips, concurrency, deadlines, limits, versions, restarts.

mod common;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use common::*;
use sd_net::{Endpoint, Error, Faults, Identity, codec, endpoint::Reply};

#[tokio::test]
async fn round_trip_names_the_caller_from_its_certificate() {
    let endpoints = cluster(&["a", "b"]).await;
    let (a, b) = (&endpoints[0], &endpoints[1]);
    let answer = a
        .call(
            "b",
            b.local_addr(),
            &Request::Echo("hello".into()),
            DEADLINE,
        )
        .await
        .expect("echo");
    assert_eq!(answer, Response::Echo("hello".into()));
    let answer = a
        .call("b", b.local_addr(), &Request::WhoAmI, DEADLINE)
        .await
        .expect("whoami");
    assert_eq!(answer, Response::YouAre("a".into()));
    // And the other way round, on the same endpoints.
    let answer = b
        .call("a", a.local_addr(), &Request::WhoAmI, DEADLINE)
        .await
        .expect("whoami back");
    assert_eq!(answer, Response::YouAre("b".into()));

    let stats = a.stats();
    assert_eq!(stats.requests_sent, 2);
    assert_eq!(stats.requests_served, 1);
    assert!(stats.bytes_sent > 0 && stats.bytes_received > 0);
    assert!(stats.latency_quantile(0.5).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_calls_share_one_connection() {
    let endpoints = cluster(&["a", "b"]).await;
    let (a, b) = (&endpoints[0], &endpoints[1]);
    let addr = b.local_addr();
    let calls = (0..100).map(|index| {
        let a = a.clone();
        async move {
            a.call("b", addr, &Request::Echo(format!("call {index}")), DEADLINE)
                .await
        }
    });
    let answers = futures::future::join_all(calls).await;
    for (index, answer) in answers.into_iter().enumerate() {
        assert_eq!(
            answer.expect("call"),
            Response::Echo(format!("call {index}"))
        );
    }
    assert_eq!(b.stats().requests_served, 100);
    assert_eq!(a.stats().requests_sent, 100);
    // Concurrent callers shared one dial: a has a single (outgoing) connection.
    assert_eq!(a.stats().open_connections, 1);
}

#[tokio::test]
async fn a_slow_request_does_not_block_another() {
    let endpoints = cluster(&["a", "b"]).await;
    let (a, b) = (endpoints[0].clone(), &endpoints[1]);
    let addr = b.local_addr();
    // Warm the connection so both calls share it.
    a.call("b", addr, &Request::Echo("warm".into()), DEADLINE)
        .await
        .expect("warm up");
    let slow_caller = a.clone();
    let slow = tokio::spawn(async move {
        slow_caller
            .call("b", addr, &Request::Sleep(1_500), DEADLINE)
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let quick = a
        .call(
            "b",
            addr,
            &Request::Echo("quick".into()),
            Duration::from_millis(500),
        )
        .await
        .expect("quick call while a slow one runs");
    assert_eq!(quick, Response::Echo("quick".into()));
    assert!(started.elapsed() < Duration::from_millis(500));
    assert!(!slow.is_finished());
    assert_eq!(
        slow.await.expect("join").expect("slow"),
        Response::Slept(1_500)
    );
    assert_eq!(a.stats().open_connections, 1);
}

#[tokio::test]
async fn deadline_expiry_names_the_peer_and_the_deadline() {
    let endpoints = cluster(&["a", "b"]).await;
    let (a, b) = (&endpoints[0], &endpoints[1]);
    let deadline = Duration::from_millis(200);
    let started = Instant::now();
    let error = a
        .call("b", b.local_addr(), &Request::Sleep(3_000), deadline)
        .await
        .expect_err("must time out");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(
        matches!(&error, Error::Timeout { node, deadline: d } if node == "b" && *d == deadline)
    );
    assert_eq!(error.to_string(), "call to node `b` timed out after 200ms");
    assert_eq!(a.stats().requests_failed, 1);

    // A peer that does not exist: the dial itself is bounded by the deadline.
    let nowhere = std::net::UdpSocket::bind(loopback()).expect("udp");
    let error = a
        .call(
            "b",
            nowhere.local_addr().expect("addr"),
            &Request::WhoAmI,
            deadline,
        )
        .await
        .expect_err("nobody answers");
    assert!(matches!(error, Error::Timeout { .. }), "{error}");
}

#[tokio::test]
async fn oversized_requests_are_refused_on_both_sides() {
    let identities = Identity::ephemeral("test", &["a", "b"]).expect("cluster");
    let client_config = sd_net::tls::client_config(&identities[0]).expect("client config");
    let b = bind(identities[1].clone()).await;
    let a = bind(identities[0].clone()).await;

    // The caller refuses to send it.
    let huge = "x".repeat(codec::MAX_MESSAGE + 1);
    let error = a
        .call("b", b.local_addr(), &Request::Echo(huge), DEADLINE)
        .await
        .expect_err("too large to send");
    assert!(matches!(error, Error::FrameTooLarge { .. }), "{error}");
    assert_eq!(b.stats().requests_served, 0);

    // A peer that sends it anyway gets an error frame, and the server counts it.
    let (_client, connection) = raw_connection(client_config, b.local_addr(), "b")
        .await
        .expect("raw connection");
    let mut frame = ((codec::MAX_MESSAGE + 1) as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&[0; 1024]);
    let reply = raw_exchange(&connection, &frame)
        .await
        .expect("error frame");
    match codec::decode::<Reply<Response>>(&reply).expect("reply") {
        Reply::Refused(message) => assert!(message.contains("exceeds"), "{message}"),
        Reply::Answer(answer) => panic!("oversized request answered: {answer:?}"),
    }
    assert_eq!(b.stats().decode_errors, 1);
    assert_eq!(b.stats().requests_served, 1);

    // Garbage of a legal size is refused too, and the connection still serves.
    let mut garbage = 6u32.to_le_bytes().to_vec();
    garbage.extend_from_slice(&[1, 0, 0xff, 0xff, 0xff, 0xff]);
    let reply = raw_exchange(&connection, &garbage)
        .await
        .expect("error frame");
    assert!(matches!(
        codec::decode::<Reply<Response>>(&reply),
        Ok(Reply::Refused(_))
    ));
    assert_eq!(b.stats().decode_errors, 2);
    let answer = a
        .call(
            "b",
            b.local_addr(),
            &Request::Echo("still fine".into()),
            DEADLINE,
        )
        .await
        .expect("normal call after garbage");
    assert_eq!(answer, Response::Echo("still fine".into()));
}

#[tokio::test]
async fn another_protocol_version_is_refused_with_both_versions_named() {
    let identities = Identity::ephemeral("test", &["a", "b"]).expect("cluster");
    let client_config = sd_net::tls::client_config(&identities[0]).expect("client config");
    let b = bind(identities[1].clone()).await;
    let (_client, connection) = raw_connection(client_config, b.local_addr(), "b")
        .await
        .expect("raw connection");

    let mut frame = codec::encode_frame(&Request::WhoAmI).expect("frame");
    let other = codec::PROTOCOL_VERSION + 1;
    frame[4..6].copy_from_slice(&other.to_le_bytes());
    let reply = raw_exchange(&connection, &frame)
        .await
        .expect("error frame");
    let Reply::<Response>::Refused(message) = codec::decode(&reply).expect("reply") else {
        panic!("a request of another version was answered");
    };
    assert_eq!(
        message,
        format!(
            "protocol version mismatch: the peer speaks version {other}, this node speaks version {}",
            codec::PROTOCOL_VERSION
        )
    );
    assert_eq!(b.stats().decode_errors, 1);
}

#[tokio::test]
async fn a_restarted_peer_is_called_again() {
    let identities = Identity::ephemeral("test", &["a", "b"]).expect("cluster");
    let a = bind(identities[0].clone()).await;
    let b = bind(identities[1].clone()).await;
    let addr = b.local_addr();
    a.call("b", addr, &Request::WhoAmI, DEADLINE)
        .await
        .expect("before restart");

    b.close().await;
    drop(b);
    let error = a
        .call("b", addr, &Request::WhoAmI, Duration::from_millis(300))
        .await
        .expect_err("b is down");
    assert!(
        matches!(error, Error::Timeout { .. } | Error::ConnectionLost { .. }),
        "{error}"
    );

    // The same node comes back on the same address.
    let b = rebind(identities[1].clone(), addr).await;
    let answer = a
        .call("b", addr, &Request::WhoAmI, DEADLINE)
        .await
        .expect("after restart");
    assert_eq!(answer, Response::YouAre("a".into()));
    assert_eq!(b.stats().requests_served, 1);
}

async fn rebind(identity: Identity, addr: std::net::SocketAddr) -> TestEndpoint {
    // The old socket is released once quinn's driver task ends: retry briefly.
    let started = Instant::now();
    loop {
        match Endpoint::bind(identity.clone(), addr, Arc::new(TestService)).await {
            Ok(endpoint) => return endpoint,
            Err(error) if started.elapsed() < Duration::from_secs(5) => {
                let _ = error;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("cannot rebind {addr}: {error}"),
        }
    }
}

#[tokio::test]
async fn injected_packet_faults_are_survived_by_quic() {
    let endpoints = cluster(&["a", "b", "c"]).await;
    let (a, b, c) = (&endpoints[0], &endpoints[1], &endpoints[2]);
    let addr = b.local_addr();
    // Warm the connection: a handshake under loss waits out QUIC's 1 s initial timeout.
    a.call("b", addr, &Request::WhoAmI, DEADLINE)
        .await
        .expect("warm up");
    assert_eq!(a.faults(), Faults::default());

    // Every datagram a sends is lost: its call, dial or not, fails within its deadline.
    let lossy = Faults {
        loss: 1.0,
        ..Faults::default()
    };
    a.set_faults(lossy);
    assert_eq!(a.faults(), lossy);
    let deadline = Duration::from_millis(300);
    for (node, addr) in [("b", addr), ("c", c.local_addr())] {
        let started = Instant::now();
        let error = a
            .call(node, addr, &Request::WhoAmI, deadline)
            .await
            .expect_err("every datagram lost");
        assert!(matches!(error, Error::Timeout { .. }), "{error}");
        assert!(started.elapsed() < deadline + Duration::from_millis(200));
    }
    let stats = a.stats();
    assert_eq!(stats.requests_failed, 2);
    assert!(stats.fault_dropped_datagrams >= 2, "{stats:?}");
    assert_eq!(b.stats().requests_served, 1);
    assert_eq!(c.stats().requests_served, 0);

    // A bad network: QUIC retransmits what is lost and drops the copies, and every call
    // still succeeds, no faster than the delay of its request.
    let delay = Duration::from_millis(20);
    a.set_faults(Faults {
        loss: 0.3,
        delay,
        duplicate: 0.3,
    });
    let before = a.stats();
    for index in 0..20 {
        let started = Instant::now();
        let answer = a
            .call("b", addr, &Request::Echo(format!("call {index}")), DEADLINE)
            .await
            .expect("call on a bad network");
        assert_eq!(answer, Response::Echo(format!("call {index}")));
        assert!(started.elapsed() >= delay, "{:?}", started.elapsed());
    }
    let stats = a.stats();
    assert!(
        stats.fault_dropped_datagrams > before.fault_dropped_datagrams,
        "{stats:?}"
    );
    assert!(
        stats.fault_duplicated_datagrams > before.fault_duplicated_datagrams,
        "{stats:?}"
    );
    assert!(
        stats.fault_delayed_datagrams >= before.fault_delayed_datagrams + 20,
        "{stats:?}"
    );

    // Faults cleared: calls are fast again and no more datagrams are touched.
    a.set_faults(Faults::default());
    let mut fastest = Duration::MAX;
    for _ in 0..5 {
        let started = Instant::now();
        a.call("b", addr, &Request::WhoAmI, DEADLINE)
            .await
            .expect("faults cleared");
        fastest = fastest.min(started.elapsed());
    }
    assert!(fastest < delay, "{fastest:?}");
    let cleared = a.stats();
    assert_eq!(
        cleared.fault_dropped_datagrams,
        stats.fault_dropped_datagrams
    );
    assert_eq!(
        cleared.fault_duplicated_datagrams,
        stats.fault_duplicated_datagrams
    );
    assert_eq!(
        cleared.fault_delayed_datagrams,
        stats.fault_delayed_datagrams
    );
    // 26, or 27 if QUIC delivered the request lost at first after its caller gave up.
    assert!(b.stats().requests_served >= 26);
}

#[tokio::test]
async fn a_closed_endpoint_refuses_calls() {
    let endpoints = cluster(&["a", "b"]).await;
    let (a, b) = (&endpoints[0], &endpoints[1]);
    a.close().await;
    let error = a
        .call("b", b.local_addr(), &Request::WhoAmI, DEADLINE)
        .await
        .expect_err("closed");
    assert!(matches!(error, Error::Closed));
}
