//! Mutual TLS: foreign CAs and wrong names are refused and counted; cluster files work.

mod common;

use std::sync::Arc;

use common::*;
use sd_net::{Error, Identity, pki};

#[tokio::test]
async fn a_client_certificate_from_a_foreign_ca_is_refused_and_counted() {
    let ours = Identity::ephemeral("test", &["b"]).expect("our cluster");
    let foreign = Identity::ephemeral("test", &["a"]).expect("foreign cluster");
    let b = bind(ours[0].clone()).await;

    // A client that trusts our CA (so it accepts b) but presents a foreign certificate.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ours[0].ca_certificate().clone()).expect("root");
    let config = rustls::ClientConfig::builder_with_provider(sd_net::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(
            foreign[0].certificate_chain().to_vec(),
            foreign[0].private_key().clone_key(),
        )
        .expect("client auth");
    let mut config = config;
    config.alpn_protocols = vec![sd_net::tls::ALPN.to_vec()];

    // TLS 1.3 lets the client finish first; the refusal shows on the first exchange.
    let outcome = match raw_connection(config, b.local_addr(), "b").await {
        Err(error) => Err(error),
        Ok((_client, connection)) => raw_exchange(&connection, &[0; 8]).await,
    };
    assert!(outcome.is_err(), "the foreign client got an answer");
    wait_for(|| b.stats().refused_handshakes == 1).await;
    assert_eq!(b.stats().requests_served, 0);
}

#[tokio::test]
async fn a_server_from_a_foreign_ca_is_refused_and_counted() {
    let ours = Identity::ephemeral("test", &["a"]).expect("our cluster");
    let foreign = Identity::ephemeral("test", &["b"]).expect("foreign cluster");
    let a = bind(ours[0].clone()).await;
    let b = bind(foreign[0].clone()).await;
    let error = a
        .call("b", b.local_addr(), &Request::WhoAmI, DEADLINE)
        .await
        .expect_err("foreign server");
    assert!(matches!(error, Error::Handshake { .. }), "{error}");
    // Same cluster name, so same issuer name: the signature is what gives the foreigner away.
    assert!(
        error.to_string().contains("invalid peer certificate"),
        "{error}"
    );
    assert_eq!(a.stats().refused_handshakes, 1);
    assert_eq!(b.stats().requests_served, 0);
}

#[tokio::test]
async fn dialling_b_but_reaching_c_is_refused() {
    let endpoints = cluster(&["a", "c"]).await;
    let (a, c) = (&endpoints[0], &endpoints[1]);
    let error = a
        .call("b", c.local_addr(), &Request::WhoAmI, DEADLINE)
        .await
        .expect_err("c is not b");
    assert!(
        matches!(&error, Error::Handshake { node, .. } if node == "b"),
        "{error}"
    );
    assert!(
        error.to_string().contains("not valid for name \"b\""),
        "{error}"
    );
    assert_eq!(a.stats().refused_handshakes, 1);
    assert_eq!(c.stats().requests_served, 0);
    // Dialled by its own name, c answers.
    a.call("c", c.local_addr(), &Request::WhoAmI, DEADLINE)
        .await
        .expect("c as c");
}

#[tokio::test]
async fn nodes_of_a_cluster_directory_talk() {
    let dir = tempfile::tempdir().expect("tempdir");
    pki::init(dir.path(), "prod", "a").expect("init");
    pki::issue(dir.path(), "b").expect("issue");
    let a_identity = Identity::load(dir.path(), "a").expect("load a");
    let b_identity = Identity::load(dir.path(), "b").expect("load b");
    assert_eq!(a_identity.gossip_key(), b_identity.gossip_key());
    let a = sd_net::Endpoint::bind(a_identity, loopback(), Arc::new(TestService))
        .await
        .expect("bind a");
    let b = bind(b_identity).await;
    let answer = a
        .call("b", b.local_addr(), &Request::WhoAmI, DEADLINE)
        .await
        .expect("call");
    assert_eq!(answer, Response::YouAre("a".into()));
    let answer = b
        .call("a", a.local_addr(), &Request::WhoAmI, DEADLINE)
        .await
        .expect("call back");
    assert_eq!(answer, Response::YouAre("b".into()));
}

async fn wait_for(condition: impl Fn() -> bool) {
    for _ in 0..100 {
        if condition() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("condition not met within 2 s");
}
