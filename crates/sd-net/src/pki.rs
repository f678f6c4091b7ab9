//! The cluster's PKI: a CA, one certificate per node, and the gossip key.
//!
//! Layout of a cluster directory `DIR`:
//!
//! ```text
//! DIR/cluster.toml     name = "CLUSTER"
//! DIR/ca.pem           the cluster CA certificate
//! DIR/ca.key           its private key (0600)
//! DIR/gossip.key       32 random bytes, hex (0600)
//! DIR/nodes/NODE.pem   a node's certificate, signed by the CA, naming NODE as a DNS SAN
//! DIR/nodes/NODE.key   its private key (0600)
//! ```
//!
//! Keys are ECDSA P-256. The CA certificate's subject is derived from the cluster name alone,
//! so `issue` can rebuild the issuer from `cluster.toml` and `ca.key`.

use std::{
    fs,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, pem::PemObject,
};

use crate::{Error, Result};

/// Longest node or cluster name.
pub const MAX_NAME: usize = 63;

const CLUSTER_FILE: &str = "cluster.toml";
const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";
const GOSSIP_KEY: &str = "gossip.key";
const NODES: &str = "nodes";

/// Checks a node (or cluster) name: `[A-Za-z0-9._-]`, 1 to 63 bytes, starting with a letter or
/// digit, and usable as a certificate DNS name.
pub fn validate_name(name: &str) -> Result<()> {
    let invalid = |reason| {
        Err(Error::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() || name.len() > MAX_NAME {
        return invalid("must be 1 to 63 characters long");
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return invalid("must start with a letter or a digit");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return invalid("may contain only letters, digits, '.', '_' and '-'");
    }
    // The name goes into certificates and TLS server names: refuse what TLS would refuse later
    // (empty labels, a final label that is all digits...).
    match ServerName::try_from(name) {
        Ok(ServerName::DnsName(_)) => Ok(()),
        Ok(_) => invalid("must not be an IP address"),
        Err(_) => invalid("is not a valid DNS name (empty or all-numeric final label?)"),
    }
}

/// The files `init` created.
#[derive(Debug, Clone)]
pub struct ClusterFiles {
    /// The cluster directory.
    pub dir: PathBuf,
    /// `cluster.toml`, holding the cluster name.
    pub cluster_file: PathBuf,
    /// The CA certificate.
    pub ca_cert: PathBuf,
    /// The CA private key.
    pub ca_key: PathBuf,
    /// The gossip key.
    pub gossip_key: PathBuf,
    /// The first node's files.
    pub first_node: NodeFiles,
}

/// A node's certificate and key files.
#[derive(Debug, Clone)]
pub struct NodeFiles {
    /// The node name.
    pub node: String,
    /// The node certificate (PEM).
    pub cert: PathBuf,
    /// The node private key (PEM, 0600).
    pub key: PathBuf,
}

/// Everything a node needs to talk to its cluster: CA, own certificate and key, cluster name and
/// gossip key.
pub struct Identity {
    cluster_name: String,
    node_name: String,
    ca_cert: CertificateDer<'static>,
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    gossip_key: [u8; 32],
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            cluster_name: self.cluster_name.clone(),
            node_name: self.node_name.clone(),
            ca_cert: self.ca_cert.clone(),
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
            gossip_key: self.gossip_key,
        }
    }
}

impl std::fmt::Debug for Identity {
    // Keys stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("cluster_name", &self.cluster_name)
            .field("node_name", &self.node_name)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Loads node `node`'s identity from cluster directory `dir`.
    pub fn load(dir: &Path, node: &str) -> Result<Identity> {
        validate_name(node)?;
        let cluster_name = read_cluster_name(dir)?;
        let ca_cert = read_certificates(&dir.join(CA_CERT))?
            .into_iter()
            .next()
            .ok_or_else(|| bad_file(&dir.join(CA_CERT), "no certificate in it"))?;
        let node_files = node_files(dir, node);
        let cert_chain = read_certificates(&node_files.cert)?;
        if cert_chain.is_empty() {
            return Err(bad_file(&node_files.cert, "no certificate in it"));
        }
        let key_pem = read(&node_files.key)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|error| bad_file(&node_files.key, &error.to_string()))?;
        let gossip_key = read_gossip_key(&dir.join(GOSSIP_KEY))?;
        Ok(Identity {
            cluster_name,
            node_name: node.to_owned(),
            ca_cert,
            cert_chain,
            key,
            gossip_key,
        })
    }

    /// Makes a throwaway cluster in memory (for tests and `sd demo`): a fresh CA, a fresh gossip
    /// key, and one identity per node, in the order given. Nothing touches the disk.
    pub fn ephemeral(cluster_name: &str, nodes: &[&str]) -> Result<Vec<Identity>> {
        validate_name(cluster_name)?;
        let ca_key = KeyPair::generate()?;
        let ca_params = ca_params(cluster_name);
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, &ca_key);
        let gossip_key = random_key()?;
        nodes
            .iter()
            .map(|node| {
                let (cert, key) = node_certificate(&issuer, node)?;
                Ok(Identity {
                    cluster_name: cluster_name.to_owned(),
                    node_name: (*node).to_owned(),
                    ca_cert: ca_cert.der().clone(),
                    cert_chain: vec![cert.der().clone()],
                    key: private_key(&key),
                    gossip_key,
                })
            })
            .collect()
    }

    /// The cluster name.
    pub fn cluster_name(&self) -> &str {
        &self.cluster_name
    }

    /// This node's name, as its certificate states it.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The cluster CA certificate.
    pub fn ca_certificate(&self) -> &CertificateDer<'static> {
        &self.ca_cert
    }

    /// This node's certificate chain, its own certificate first.
    pub fn certificate_chain(&self) -> &[CertificateDer<'static>] {
        &self.cert_chain
    }

    /// This node's private key.
    pub fn private_key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }

    /// The cluster's gossip key (32 bytes).
    pub fn gossip_key(&self) -> &[u8; 32] {
        &self.gossip_key
    }
}

/// Creates a cluster in `dir`: CA, gossip key, cluster file and the first node's certificate.
/// Refuses to overwrite an existing CA.
pub fn init(dir: &Path, cluster_name: &str, first_node: &str) -> Result<ClusterFiles> {
    validate_name(cluster_name)?;
    validate_name(first_node)?;
    let ca_cert_path = dir.join(CA_CERT);
    let ca_key_path = dir.join(CA_KEY);
    for existing in [&ca_cert_path, &ca_key_path] {
        if existing.exists() {
            return Err(Error::CaExists(existing.clone()));
        }
    }
    create_dir(dir)?;
    create_dir(&dir.join(NODES))?;

    let ca_key = KeyPair::generate()?;
    let ca_params = ca_params(cluster_name);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    // The key first, with create_new: two concurrent inits cannot both succeed.
    write_new(&ca_key_path, ca_key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&ca_cert_path, ca_cert.pem().as_bytes(), 0o644)?;
    let cluster_file = dir.join(CLUSTER_FILE);
    write_replace(
        &cluster_file,
        format!("name = \"{cluster_name}\"\n").as_bytes(),
    )?;
    let gossip_key = dir.join(GOSSIP_KEY);
    write_replace_secret(&gossip_key, hex(&random_key()?).as_bytes())?;

    let first_node = write_node(dir, &Issuer::new(ca_params, &ca_key), first_node)?;
    Ok(ClusterFiles {
        dir: dir.to_owned(),
        cluster_file,
        ca_cert: ca_cert_path,
        ca_key: ca_key_path,
        gossip_key,
        first_node,
    })
}

/// Issues a certificate for node `node`, signed by the CA of the cluster in `dir`. Refuses to
/// overwrite the node's existing certificate.
pub fn issue(dir: &Path, node: &str) -> Result<NodeFiles> {
    validate_name(node)?;
    let cluster_name = read_cluster_name(dir)?;
    let ca_key_path = dir.join(CA_KEY);
    let ca_pem = String::from_utf8(read(&ca_key_path)?)
        .map_err(|_| bad_file(&ca_key_path, "not UTF-8 text"))?;
    let ca_key =
        KeyPair::from_pem(&ca_pem).map_err(|error| bad_file(&ca_key_path, &error.to_string()))?;
    create_dir(&dir.join(NODES))?;
    write_node(dir, &Issuer::new(ca_params(&cluster_name), &ca_key), node)
}

fn ca_params(cluster_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("sd cluster {cluster_name} CA"));
    params
        .distinguished_name
        .push(DnType::OrganizationName, "sd");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn node_certificate(
    issuer: &Issuer<'_, &KeyPair>,
    node: &str,
) -> Result<(rcgen::Certificate, KeyPair)> {
    validate_name(node)?;
    let mut params = CertificateParams::new(vec![node.to_owned()])?;
    params.distinguished_name.push(DnType::CommonName, node);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Every node both serves and dials.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert, key))
}

fn write_node(dir: &Path, issuer: &Issuer<'_, &KeyPair>, node: &str) -> Result<NodeFiles> {
    let files = node_files(dir, node);
    if files.cert.exists() {
        return Err(Error::NodeExists {
            node: node.to_owned(),
            path: files.cert,
        });
    }
    let (cert, key) = node_certificate(issuer, node)?;
    write_new(&files.key, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&files.cert, cert.pem().as_bytes(), 0o644)?;
    Ok(files)
}

fn node_files(dir: &Path, node: &str) -> NodeFiles {
    let nodes = dir.join(NODES);
    NodeFiles {
        node: node.to_owned(),
        cert: nodes.join(format!("{node}.pem")),
        key: nodes.join(format!("{node}.key")),
    }
}

fn private_key(key: &KeyPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()))
}

fn random_key() -> Result<[u8; 32]> {
    let mut key = [0; 32];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| Error::Tls("the system random generator failed".into()))?;
    Ok(key)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn read_cluster_name(dir: &Path) -> Result<String> {
    let path = dir.join(CLUSTER_FILE);
    let text = String::from_utf8(read(&path)?).map_err(|_| bad_file(&path, "not UTF-8 text"))?;
    let name = text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("name"))
        .filter_map(|rest| rest.trim_start().strip_prefix('='))
        .map(|value| value.trim().trim_matches('"'))
        .next()
        .ok_or_else(|| bad_file(&path, "no `name = \"...\"` line"))?;
    validate_name(name).map_err(|error| bad_file(&path, &error.to_string()))?;
    Ok(name.to_owned())
}

fn read_gossip_key(path: &Path) -> Result<[u8; 32]> {
    let text = String::from_utf8(read(path)?).map_err(|_| bad_file(path, "not UTF-8 text"))?;
    let text = text.trim();
    let mut key = [0; 32];
    if text.len() != 64 || !text.is_ascii() {
        return Err(bad_file(path, "expected 64 hexadecimal digits"));
    }
    for (byte, pair) in key.iter_mut().zip(text.as_bytes().chunks(2)) {
        let digits = std::str::from_utf8(pair).map_err(|_| bad_file(path, "not hexadecimal"))?;
        *byte = u8::from_str_radix(digits, 16).map_err(|_| bad_file(path, "not hexadecimal"))?;
    }
    Ok(key)
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read(path)?;
    CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|error| bad_file(path, &error.to_string()))
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|source| io_error(path, source))
}

fn create_dir(path: &Path) -> Result<()> {
    fs::create_dir_all(path).map_err(|source| io_error(path, source))
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| io_error(path, source))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|source| io_error(path, source))
}

fn write_replace(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(path, bytes).map_err(|source| io_error(path, source))
}

fn write_replace_secret(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| io_error(path, source))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|source| io_error(path, source))
}

fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_owned(),
        source,
    }
}

fn bad_file(path: &Path, reason: &str) -> Error {
    Error::BadFile {
        path: path.to_owned(),
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn names_are_validated() {
        for good in ["a", "node-1", "n1.example", "node_2", "A9", &"x".repeat(63)] {
            validate_name(good).unwrap_or_else(|error| panic!("{good}: {error}"));
        }
        for bad in [
            "",
            "-a",
            ".a",
            "_a",
            "a b",
            "a/b",
            "é",
            "a..b",
            "10.0.0.1",
            &"x".repeat(64),
        ] {
            let error = validate_name(bad).expect_err(bad);
            assert!(error.to_string().contains("invalid name"), "{error}");
        }
    }

    #[test]
    fn init_writes_the_cluster_files_with_private_modes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = init(dir.path(), "prod", "a").expect("init");
        assert_eq!(mode(&files.ca_key), 0o600);
        assert_eq!(mode(&files.gossip_key), 0o600);
        assert_eq!(mode(&files.first_node.key), 0o600);
        assert!(files.ca_cert.exists() && files.first_node.cert.exists());

        let identity = Identity::load(dir.path(), "a").expect("load");
        assert_eq!(identity.cluster_name(), "prod");
        assert_eq!(identity.node_name(), "a");
        assert_eq!(identity.certificate_chain().len(), 1);
        let gossip = fs::read_to_string(&files.gossip_key).expect("gossip key");
        assert_eq!(gossip.len(), 64);
        assert_eq!(hex(identity.gossip_key()), gossip);
    }

    #[test]
    fn init_refuses_to_overwrite_a_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        init(dir.path(), "prod", "a").expect("init");
        let error = init(dir.path(), "prod", "b").expect_err("second init");
        assert!(matches!(error, Error::CaExists(_)));
        assert!(error.to_string().contains("refusing to overwrite"));
    }

    #[test]
    fn issue_signs_with_the_same_ca_and_refuses_duplicates() {
        let dir = tempfile::tempdir().expect("tempdir");
        init(dir.path(), "prod", "a").expect("init");
        let files = issue(dir.path(), "b").expect("issue");
        assert_eq!(mode(&files.key), 0o600);
        let b = Identity::load(dir.path(), "b").expect("load b");
        let ca = Identity::load(dir.path(), "a").expect("load a");
        assert_eq!(b.ca_certificate(), ca.ca_certificate());
        assert!(matches!(
            issue(dir.path(), "b"),
            Err(Error::NodeExists { .. })
        ));
        assert!(matches!(
            issue(dir.path(), "bad name"),
            Err(Error::InvalidName { .. })
        ));
    }

    #[test]
    fn node_certificates_name_the_node() {
        let identities = Identity::ephemeral("test", &["a", "node_2"]).expect("ephemeral");
        for identity in &identities {
            let cert =
                webpki::EndEntityCert::try_from(&identity.certificate_chain()[0]).expect("parse");
            let names: Vec<&str> = cert.valid_dns_names().collect();
            assert_eq!(names, vec![identity.node_name()]);
        }
    }

    #[test]
    fn load_of_a_missing_node_says_which_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        init(dir.path(), "prod", "a").expect("init");
        let error = Identity::load(dir.path(), "zz").expect_err("missing");
        assert!(error.to_string().contains("zz.pem"), "{error}");
    }
}
