//! TLS on the public listener (`[tls]`): the certificate and key read from PEM files, client
//! certificates verified against `client_ca_file` when it is set, and the handshake of one
//! accepted connection, bounded in time.
//!
//! Each shard has its own rustls `ServerConfig` (its own session cache: nothing shared between
//! cores per handshake) whose certificate comes from a [`CertSlot`]; SIGHUP re-reads the
//! files and swaps the new certificate into every shard's slot, or refuses it and keeps the old
//! one. Handshakes in progress and connections already open keep the certificate they started
//! with. Error messages name the file, never the key's contents.

use crate::config::TlsConfig;
use futures_lite::future;
use futures_rustls::server::TlsStream;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The one protocol offered by ALPN: corepost speaks HTTP/1.1 only.
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// The first byte of every TLS connection: a record of content type `handshake`.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why the files `[tls]` names cannot be used. Each message names the setting and the file;
/// none quotes the files' contents (a malformed key file's lines would be secret).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file that could not be read, or is not valid PEM.
    #[error("{setting}: {path}: {problem}")]
    Pem {
        /// `tls.cert_file`, `tls.key_file` or `tls.client_ca_file`.
        setting: &'static str,
        /// The file.
        path: String,
        /// What is wrong.
        #[source]
        problem: PemProblem,
    },
    /// A certificate file (or CA file) without a certificate.
    #[error("{setting}: {path}: no certificate in it (expected PEM \"BEGIN CERTIFICATE\" blocks)")]
    NoCertificate {
        /// `tls.cert_file` or `tls.client_ca_file`.
        setting: &'static str,
        /// The file.
        path: String,
    },
    /// `tls.key_file` holds no private key.
    #[error("tls.key_file: {0}: no private key in it (expected PEM \"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\")")]
    NoPrivateKey(String),
    /// `tls.key_file` holds a key rustls cannot sign with (rustls's error is not kept: it
    /// might describe the key).
    #[error("tls.key_file: {0}: not a usable private key (RSA, ECDSA P-256/P-384 or Ed25519)")]
    UnusableKey(String),
    /// The key is not the certificate's.
    #[error(
        "tls.key_file: {key_file} does not match the certificate in tls.cert_file {cert_file}"
    )]
    KeyMismatch {
        /// `tls.key_file`.
        key_file: String,
        /// `tls.cert_file`.
        cert_file: String,
    },
    /// The certificate and key could not be checked against each other.
    #[error("tls.cert_file: {path}: {source}")]
    Certificate {
        /// `tls.cert_file`.
        path: String,
        /// rustls's reason.
        #[source]
        source: rustls::Error,
    },
    /// A certificate of `tls.client_ca_file` cannot be a trust anchor.
    #[error("tls.client_ca_file: {path}: not a usable CA certificate: {source}")]
    CaCertificate {
        /// `tls.client_ca_file`.
        path: String,
        /// rustls's reason.
        #[source]
        source: rustls::Error,
    },
    /// No client certificate verifier can be built from `tls.client_ca_file`.
    #[error("tls.client_ca_file: {path}: {source}")]
    ClientVerifier {
        /// `tls.client_ca_file`.
        path: String,
        /// rustls's reason.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    /// rustls offers no safe protocol version with its provider.
    #[error("tls: {0}")]
    Protocols(#[source] rustls::Error),
}

/// What is wrong with a PEM file, without its contents: the I/O error, or what kind of damage.
#[derive(Debug, thiserror::Error)]
pub enum PemProblem {
    /// The file could not be read.
    #[error("cannot read: {0}")]
    Read(#[source] std::io::Error),
    /// No block of the kind looked for.
    #[error("no PEM block of the expected kind in it")]
    NoBlock,
    /// A block without its END line.
    #[error("not valid PEM: a block has no END line")]
    NoSectionEnd,
    /// A malformed BEGIN line.
    #[error("not valid PEM: a malformed BEGIN line")]
    BadSectionStart,
    /// Bad base64 inside a block.
    #[error("not valid PEM: bad base64 in a block")]
    Base64,
    /// A block too large.
    #[error("not valid PEM: a block is too large")]
    TooLarge,
    /// Anything else rustls's PEM reader refuses.
    #[error("not valid PEM")]
    Other,
}

/// Reads a PEM certificate chain (end-entity certificate first).
fn read_chain(setting: &'static str, path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(setting, path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_error(setting, path, e))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            setting,
            path: path.to_string(),
        });
    }
    Ok(chain)
}

/// A PEM reading error, without the file's contents (the variants of rustls's error that
/// carry a line of the file are not kept).
fn pem_error(setting: &'static str, path: &str, e: rustls::pki_types::pem::Error) -> TlsError {
    use rustls::pki_types::pem::Error as E;
    let problem = match e {
        E::Io(io) => PemProblem::Read(io),
        E::NoItemsFound => PemProblem::NoBlock,
        E::MissingSectionEnd { .. } => PemProblem::NoSectionEnd,
        E::IllegalSectionStart { .. } => PemProblem::BadSectionStart,
        E::Base64Decode(_) => PemProblem::Base64,
        E::SectionTooLarge => PemProblem::TooLarge,
        _ => PemProblem::Other,
    };
    TlsError::Pem {
        setting,
        path: path.to_string(),
        problem,
    }
}

/// Reads `cert_file` and `key_file` and checks that they belong together. Errors name the
/// setting and the file; none quotes the key.
pub fn load_certified_key(cfg: &TlsConfig) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = read_chain("tls.cert_file", &cfg.cert_file)?;
    let key_path = cfg.key_file.as_str();
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoPrivateKey(key_path.into()),
        e => pem_error("tls.key_file", key_path, e),
    })?;
    let provider = provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|_| TlsError::UnusableKey(key_path.into()))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(TlsError::KeyMismatch {
                key_file: key_path.into(),
                cert_file: cfg.cert_file.clone(),
            })
        }
        Err(source) => {
            return Err(TlsError::Certificate {
                path: cfg.cert_file.clone(),
                source,
            })
        }
    }
    Ok(Arc::new(certified))
}

/// Reads the CAs that client certificates must chain to.
fn client_verifier(
    path: &str,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_chain("tls.client_ca_file", path)? {
        roots.add(cert).map_err(|source| TlsError::CaCertificate {
            path: path.to_string(),
            source,
        })?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|source| TlsError::ClientVerifier {
            path: path.to_string(),
            source,
        })
}

/// Checks that every file `[tls]` names can be used (for `check-config` and start-up); the
/// errors name setting and file.
pub fn check(cfg: &TlsConfig) -> Vec<TlsError> {
    let mut errs = Vec::new();
    if let Err(e) = load_certified_key(cfg) {
        errs.push(e);
    }
    if let Some(ca) = &cfg.client_ca_file {
        if let Err(e) = client_verifier(ca) {
            errs.push(e);
        }
    }
    errs
}

/// The certificate one shard presents: swapped as a whole by a reload, read once per
/// handshake (an uncontended read lock of the shard's own slot).
#[derive(Debug)]
pub struct CertSlot(RwLock<Arc<CertifiedKey>>);

impl CertSlot {
    fn set(&self, key: Arc<CertifiedKey>) {
        match self.0.write() {
            Ok(mut k) => *k = key,
            Err(poisoned) => *poisoned.into_inner() = key,
        }
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(match self.0.read() {
            Ok(k) => k.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        })
    }
}

/// One shard's TLS side: its rustls configuration and the time a handshake may take.
#[derive(Debug, Clone)]
pub struct ShardTls {
    config: Arc<ServerConfig>,
    handshake_timeout: Duration,
}

/// The TLS configuration of every shard, and the reload that swaps their certificate.
#[derive(Debug)]
pub struct Tls {
    /// One per shard, in shard order.
    pub shards: Vec<ShardTls>,
    slots: Vec<Arc<CertSlot>>,
    files: TlsConfig,
}

impl Tls {
    /// Reads the files and builds `shards` server configurations. Errors name the file.
    pub fn new(cfg: &TlsConfig, shards: usize) -> Result<Tls, TlsError> {
        let key = load_certified_key(cfg)?;
        crate::auth::warn_if_exposed("tls.key_file", std::path::Path::new(&cfg.key_file));
        let verifier = cfg
            .client_ca_file
            .as_deref()
            .map(client_verifier)
            .transpose()?;
        let mut out = Tls {
            shards: Vec::with_capacity(shards),
            slots: Vec::with_capacity(shards),
            files: cfg.clone(),
        };
        for _ in 0..shards {
            let slot = Arc::new(CertSlot(RwLock::new(key.clone())));
            let builder = ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(TlsError::Protocols)?;
            let builder = match &verifier {
                Some(v) => builder.with_client_cert_verifier(v.clone()),
                None => builder.with_no_client_auth(),
            };
            let mut config = builder.with_cert_resolver(slot.clone());
            config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
            out.shards.push(ShardTls {
                config: Arc::new(config),
                handshake_timeout: Duration::from_millis(cfg.handshake_timeout_ms),
            });
            out.slots.push(slot);
        }
        Ok(out)
    }

    /// Re-reads `cert_file` and `key_file`; if both are good and match, every shard presents
    /// the new certificate from its next handshake on. Otherwise nothing changes. Returns a
    /// line for the log (the certificate's file, never the key).
    pub fn reload(&self) -> Result<String, TlsError> {
        let key = load_certified_key(&self.files)?;
        for slot in &self.slots {
            slot.set(key.clone());
        }
        Ok(format!(
            "certificate from {} ({} in the chain), key from {}",
            self.files.cert_file,
            key.cert.len(),
            self.files.key_file
        ))
    }
}

/// Why a connection on the TLS listener was closed before any HTTP.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The client sent something other than a TLS handshake (e.g. plain HTTP).
    #[error("not TLS")]
    NotTls,
    /// The handshake did not complete within `tls.handshake_timeout_ms`.
    #[error("handshake not completed within {0} ms")]
    Timeout(u128),
    /// The handshake failed (no shared protocol, bad or missing client certificate, ...).
    #[error("handshake failed: {0}")]
    Failed(std::io::Error),
}

impl ShardTls {
    /// Completes the server side of the handshake on `stream`, within the handshake timeout.
    /// A client whose first byte does not start a TLS handshake record gets its connection
    /// closed without a byte sent. Memory per handshake is bounded by rustls (a handshake
    /// message is at most 64 KiB).
    pub async fn accept(
        &self,
        stream: glommio::net::TcpStream,
    ) -> Result<TlsStream<glommio::net::TcpStream>, HandshakeError> {
        let handshake = async {
            let mut first = [0u8; 1];
            match stream.peek(&mut first).await {
                Ok(1) if first[0] == TLS_HANDSHAKE_RECORD => {}
                Ok(_) => return Err(HandshakeError::NotTls),
                Err(e) => return Err(HandshakeError::Failed(e.into())),
            }
            futures_rustls::TlsAcceptor::from(self.config.clone())
                .accept(stream)
                .await
                .map_err(HandshakeError::Failed)
        };
        let limit = self.handshake_timeout;
        future::or(handshake, async {
            glommio::timer::sleep(limit).await;
            Err(HandshakeError::Timeout(limit.as_millis()))
        })
        .await
    }
}
