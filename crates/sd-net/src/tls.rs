//! Mutual TLS for QUIC: both sides present a node certificate signed by the cluster CA.
//!
//! The client dials node X with server name X, so the server's certificate must name X. The
//! server reads the client's node name from its certificate (the single valid node name among
//! its DNS SANs) and hands it to handlers as [`PeerName`]. Only the `ring` provider is used, and
//! it is passed explicitly: with two providers compiled in, rustls' default builders panic.

use std::sync::Arc;

use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName},
    server::WebPkiClientVerifier,
};

use crate::{Error, Identity, Result, endpoint::PeerName, pki::validate_name};

/// The ALPN protocol of sd's peer transport.
pub const ALPN: &[u8] = b"sd/1";

/// The crypto provider: ring, always passed explicitly.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(identity: &Identity) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    roots
        .add(identity.ca_certificate().clone())
        .map_err(|error| Error::Tls(format!("cluster CA certificate: {error}")))?;
    Ok(Arc::new(roots))
}

/// The server side: requires a client certificate from the cluster CA, presents this node's.
pub fn server_config(identity: &Identity) -> Result<ServerConfig> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(identity)?, provider())
        .build()
        .map_err(|error| Error::Tls(error.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| Error::Tls(error.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            identity.certificate_chain().to_vec(),
            identity.private_key().clone_key(),
        )
        .map_err(|error| Error::Tls(error.to_string()))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The client side: trusts only the cluster CA, presents this node's certificate.
pub fn client_config(identity: &Identity) -> Result<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| Error::Tls(error.to_string()))?
        .with_root_certificates(roots(identity)?)
        .with_client_auth_cert(
            identity.certificate_chain().to_vec(),
            identity.private_key().clone_key(),
        )
        .map_err(|error| Error::Tls(error.to_string()))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The server name to dial node `node` with; its certificate must name it.
pub fn server_name(node: &str) -> Result<ServerName<'static>> {
    validate_name(node)?;
    ServerName::try_from(node.to_owned()).map_err(|_| Error::InvalidName {
        name: node.to_owned(),
        reason: "not a valid TLS server name",
    })
}

/// The node name a verified peer certificate states: its one valid node name among the DNS SANs.
pub fn node_name_of(certificate: &CertificateDer<'_>) -> Result<PeerName> {
    let parsed = webpki::EndEntityCert::try_from(certificate)
        .map_err(|error| Error::Tls(format!("unparsable peer certificate: {error}")))?;
    let mut names = parsed
        .valid_dns_names()
        .filter(|name| validate_name(name).is_ok());
    let Some(name) = names.next() else {
        return Err(Error::Tls("peer certificate names no node".into()));
    };
    if names.next().is_some() {
        return Err(Error::Tls("peer certificate names several nodes".into()));
    }
    Ok(PeerName::new(name))
}

/// The node name of the peer of an established connection, from its certificate.
pub fn peer_name(connection: &quinn::Connection) -> Result<PeerName> {
    let identity = connection
        .peer_identity()
        .ok_or_else(|| Error::Tls("peer presented no certificate".into()))?;
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| Error::Tls("peer identity is not a certificate chain".into()))?;
    let leaf = chain
        .first()
        .ok_or_else(|| Error::Tls("peer presented an empty certificate chain".into()))?;
    node_name_of(leaf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_build_with_the_explicit_provider() {
        let identities = Identity::ephemeral("test", &["a"]).expect("ephemeral");
        let server = server_config(&identities[0]).expect("server");
        let client = client_config(&identities[0]).expect("client");
        assert_eq!(server.alpn_protocols, vec![ALPN.to_vec()]);
        assert_eq!(client.alpn_protocols, vec![ALPN.to_vec()]);
    }

    #[test]
    fn node_name_comes_from_the_certificate() {
        let identities = Identity::ephemeral("test", &["alpha", "b.c"]).expect("ephemeral");
        for identity in &identities {
            let name = node_name_of(&identity.certificate_chain()[0]).expect("name");
            assert_eq!(name.as_str(), identity.node_name());
        }
    }

    #[test]
    fn server_names_are_validated() {
        assert!(server_name("b").is_ok());
        assert!(server_name("not valid").is_err());
    }
}
