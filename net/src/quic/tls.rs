//! The cluster's TLS identity: a cluster CA, this node's certificate and key,
//! and the rustls configurations built from them.
//!
//! Every connection is mutual TLS 1.3: a server accepts only clients whose
//! certificate chains to the cluster CA, and a client accepts only a server
//! whose certificate chains to the CA *and* names [`SERVER_NAME`] (Nomad's
//! `verify_server_hostname`), so a client agent's certificate cannot be used
//! to impersonate a server.
//!
//! Two ways to get an identity:
//! - production: [`ClusterTls::load`] from PEM files (Nomad's
//!   `tls { ca_file cert_file key_file }`);
//! - development: [`ClusterTls::generate_dev`] creates a CA and a node
//!   certificate with rcgen and writes them as PEM files; [`DevCa`] issues
//!   further node certificates from the same CA (tests, multi-node dev
//!   clusters).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The name every server certificate carries and every client verifies,
/// whatever address it dialled: servers are reached by IP, so the IP cannot
/// be what identifies them. Nomad's `server.<region>.nomad`, with Caravan's
/// single region `global`.
pub const SERVER_NAME: &str = "server.global.caravan";

/// File names [`ClusterTls::generate_dev`] and [`DevCa::write_pem`] use.
pub const CA_FILE: &str = "ca.pem";
/// The CA's private key: written by dev mode only, so that an operator can
/// issue more nodes of the dev cluster with standard tools (openssl, cfssl).
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// This node's certificate.
pub const CERT_FILE: &str = "cert.pem";
/// This node's private key (mode 0600).
pub const KEY_FILE: &str = "key.pem";

/// Permissions of every private key file: readable by the agent's user only.
const KEY_FILE_MODE: u32 = 0o600;

/// The common names of dev certificates, for humans reading `openssl x509`.
const DEV_CA_COMMON_NAME: &str = "Caravan dev cluster CA";
const DEV_NODE_COMMON_NAME: &str = "Caravan dev node";

/// Why a TLS identity could not be created, loaded or turned into a config.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Reading or writing a PEM file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A PEM file did not parse.
    #[error("{path}: not valid PEM: {source}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What the PEM parser said.
        source: rustls::pki_types::pem::Error,
    },
    /// A certificate file held no certificate.
    #[error("{path}: no certificate found")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// rcgen could not build or sign a certificate.
    #[error("generating certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the certificates or key (e.g. key does not match).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built (e.g. no usable CA).
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// This node's TLS identity: the CA certificates it trusts, its certificate
/// chain and its private key. Cheap to clone (the key is copied once per
/// clone; clones happen at start-up only).
pub struct ClusterTls {
    ca_certs: Vec<CertificateDer<'static>>,
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for ClusterTls {
    fn clone(&self) -> Self {
        Self { ca_certs: self.ca_certs.clone(), cert_chain: self.cert_chain.clone(), key: self.key.clone_key() }
    }
}

/// Never prints the private key.
impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTls")
            .field("ca_certs", &self.ca_certs.len())
            .field("cert_chain", &self.cert_chain.len())
            .finish_non_exhaustive()
    }
}

impl ClusterTls {
    /// Load an identity from PEM files: `ca_file` may hold several CA
    /// certificates (rotation), `cert_file` this node's chain (leaf first),
    /// `key_file` its private key. Builds both rustls configs once so that a
    /// mismatched key or an unusable CA fails here, at start-up.
    pub fn load(ca_file: &Path, cert_file: &Path, key_file: &Path) -> Result<Self, TlsError> {
        let ca_certs = read_certs(ca_file)?;
        let cert_chain = read_certs(cert_file)?;
        let key = PrivateKeyDer::from_pem_file(key_file)
            .map_err(|source| TlsError::Pem { path: key_file.to_path_buf(), source })?;
        let tls = Self { ca_certs, cert_chain, key };
        tls.server_config()?;
        tls.client_config()?;
        Ok(tls)
    }

    /// Development mode: create a fresh CA and a node certificate signed by
    /// it, write `ca.pem`, `ca-key.pem`, `cert.pem` and `key.pem` into `dir`
    /// (created if missing; keys mode 0600) and return the identity.
    pub fn generate_dev(dir: &Path) -> Result<Self, TlsError> {
        let ca = DevCa::generate()?;
        let tls = ca.issue_node(&[])?;
        ca.write_pem(dir)?;
        tls.write_pem(dir)?;
        Ok(tls)
    }

    /// Write this node's certificate and key as PEM to the given paths (the
    /// key with mode 0600).
    pub fn write_node_pem_to(&self, cert_file: &Path, key_file: &Path) -> Result<(), TlsError> {
        write_file(cert_file, certs_pem(&self.cert_chain).as_bytes(), None)?;
        let key_pem = pem_block("PRIVATE KEY", self.key.secret_der());
        write_file(key_file, key_pem.as_bytes(), Some(KEY_FILE_MODE))
    }

    /// Write this node's certificate chain and key as `cert.pem` and
    /// `key.pem` (mode 0600) into `dir`, and the trusted CAs as `ca.pem`.
    pub fn write_pem(&self, dir: &Path) -> Result<(), TlsError> {
        create_dir(dir)?;
        write_file(&dir.join(CA_FILE), certs_pem(&self.ca_certs).as_bytes(), None)?;
        write_file(&dir.join(CERT_FILE), certs_pem(&self.cert_chain).as_bytes(), None)?;
        let key_pem = pem_block("PRIVATE KEY", self.key.secret_der());
        write_file(&dir.join(KEY_FILE), key_pem.as_bytes(), Some(KEY_FILE_MODE))
    }

    /// The rustls server side: TLS 1.3 only, client certificates required
    /// and verified against the cluster CA.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let provider = crypto_provider();
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(self.roots()?), provider.clone())
                .build()?;
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.cert_chain.clone(), self.key.clone_key())?;
        Ok(config)
    }

    /// The rustls client side: TLS 1.3 only, the server verified against the
    /// cluster CA (under [`SERVER_NAME`], which the caller passes when
    /// connecting), this node's certificate presented for mutual TLS.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let config = rustls::ClientConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.cert_chain.clone(), self.key.clone_key())?;
        Ok(config)
    }

    /// The node's private key, for deriving other node secrets from it
    /// (the QUIC stateless reset key).
    pub(crate) fn private_key_der(&self) -> &[u8] {
        self.key.secret_der()
    }

    fn roots(&self) -> Result<rustls::RootCertStore, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in &self.ca_certs {
            roots.add(ca.clone())?;
        }
        Ok(roots)
    }
}

/// A development certificate authority: issues node certificates for tests
/// and dev clusters. Production clusters bring their own CA (`load`).
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa").finish_non_exhaustive()
    }
}

impl DevCa {
    /// A new CA with a fresh ECDSA P-256 key.
    pub fn generate() -> Result<Self, TlsError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        // Path length 0: the CA signs node certificates only, never another CA.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name.push(DnType::CommonName, DEV_CA_COMMON_NAME);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self { issuer: Issuer::new(params, key), cert: cert.der().clone() })
    }

    /// Issue a node certificate: SANs [`SERVER_NAME`], `localhost`,
    /// `127.0.0.1`, `::1` and `extra_names` (DNS names or IP addresses),
    /// usable both as a TLS server and a TLS client (servers dial each
    /// other), with a fresh key.
    pub fn issue_node(&self, extra_names: &[&str]) -> Result<ClusterTls, TlsError> {
        let mut names: Vec<String> = [SERVER_NAME, "localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
        names.extend(extra_names.iter().map(|name| name.to_string()));
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, DEV_NODE_COMMON_NAME);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let key = PrivateKeyDer::try_from(key.serialize_der()).map_err(|reason| {
            TlsError::Rustls(rustls::Error::General(format!("generated key not usable: {reason}")))
        })?;
        Ok(ClusterTls { ca_certs: vec![self.cert.clone()], cert_chain: vec![cert.der().clone()], key })
    }

    /// An existing CA from its certificate and private key (PEM files), to
    /// issue more node certificates (`caravan tls cert create`).
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Self, TlsError> {
        let read =
            |path: &Path| fs::read_to_string(path).map_err(|source| TlsError::Io { path: path.to_path_buf(), source });
        let key = KeyPair::from_pem(&read(key_file)?)?;
        let issuer = Issuer::from_ca_cert_pem(&read(cert_file)?, key)?;
        let cert = read_certs(cert_file)?.swap_remove(0);
        Ok(Self { issuer, cert })
    }

    /// Write the CA's certificate and key as PEM to the given paths (the key
    /// with mode 0600).
    pub fn write_pem_to(&self, cert_file: &Path, key_file: &Path) -> Result<(), TlsError> {
        write_file(cert_file, certs_pem(std::slice::from_ref(&self.cert)).as_bytes(), None)?;
        write_file(key_file, self.issuer.key().serialize_pem().as_bytes(), Some(KEY_FILE_MODE))
    }

    /// Write `ca.pem` and `ca-key.pem` (mode 0600) into `dir`.
    pub fn write_pem(&self, dir: &Path) -> Result<(), TlsError> {
        create_dir(dir)?;
        write_file(&dir.join(CA_FILE), certs_pem(std::slice::from_ref(&self.cert)).as_bytes(), None)?;
        write_file(&dir.join(CA_KEY_FILE), self.issuer.key().serialize_pem().as_bytes(), Some(KEY_FILE_MODE))
    }
}

/// ring, named explicitly rather than taken from rustls' process default:
/// another crate in the binary enabling aws-lc-rs would otherwise make the
/// default ambiguous and panic at start-up.
fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_error = |source| TlsError::Pem { path: path.to_path_buf(), source };
    let certs =
        CertificateDer::pem_file_iter(path).map_err(pem_error)?.collect::<Result<Vec<_>, _>>().map_err(pem_error)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_path_buf() });
    }
    Ok(certs)
}

fn certs_pem(certs: &[CertificateDer<'static>]) -> String {
    certs.iter().map(|cert| pem_block("CERTIFICATE", cert.as_ref())).collect()
}

/// RFC 7468 textual encoding: base64 in 64-character lines.
fn pem_block(label: &str, der: &[u8]) -> String {
    /// RFC 7468 line width.
    const LINE_CHARS: usize = 64;
    let encoded = crate::api::base64::encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in encoded.as_bytes().chunks(LINE_CHARS) {
        // base64 output is ASCII, so any chunk is valid UTF-8.
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn create_dir(dir: &Path) -> Result<(), TlsError> {
    fs::create_dir_all(dir).map_err(|source| TlsError::Io { path: dir.to_path_buf(), source })
}

/// Write `contents` to `path`, creating it with `mode` if given; an existing
/// file gets `mode` too, since `OpenOptions::mode` applies only on creation.
fn write_file(path: &Path, contents: &[u8], mode: Option<u32>) -> Result<(), TlsError> {
    let io_error = |source| TlsError::Io { path: path.to_path_buf(), source };
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if let Some(mode) = mode {
        options.mode(mode);
    }
    let mut file = options.open(path).map_err(io_error)?;
    if let Some(mode) = mode {
        file.set_permissions(fs::Permissions::from_mode(mode)).map_err(io_error)?;
    }
    file.write_all(contents).map_err(io_error)?;
    file.sync_all().map_err(io_error)
}
