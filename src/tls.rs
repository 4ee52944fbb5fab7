//! TLS for the gRPC listener: rustls on aws-lc-rs, optional mTLS (client
//! certificates checked against a CA at the handshake), ALPN `h2`, and
//! certificates reloaded without a restart.
//!
//! Plaintext stays the default (service-mesh sidecars terminate TLS
//! themselves). With TLS, the listener ([`crate::server::listener::tls`])
//! hands every accepted TCP connection to its own task for the handshake,
//! bounded in time and in number, so a slow or silent client never holds up
//! the accept loop.
//!
//! Reload: [`TlsState::reload`] re-reads the certificate, key and client-CA
//! files and, if their contents changed, builds a new `ServerConfig` and
//! swaps it in. New connections use it; established ones keep theirs. A
//! broken set of files (a half-written key, a key that does not match the
//! certificate) is refused and the previous configuration stays.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tracing::info;

/// Largest certificate, key or CA file read.
pub const MAX_PEM_FILE_BYTES: u64 = 1024 * 1024;

/// The files TLS is configured from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS #8, PKCS #1 or SEC1; not encrypted).
    pub key: PathBuf,
    /// PEM CA certificates for client certificates: when set, every caller
    /// must present a certificate issued by one of them (mTLS).
    pub client_ca: Option<PathBuf>,
}

/// Why TLS could not be configured. Messages name the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A file is larger than [`MAX_PEM_FILE_BYTES`].
    #[error("{} is larger than {MAX_PEM_FILE_BYTES} bytes; it should hold PEM certificates or a key", .path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// No certificate in a certificate or CA file.
    #[error("{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", .path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// No usable private key in the key file.
    #[error(
        "{} holds no unencrypted PEM private key (PKCS #8 \"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\")",
        .path.display()
    )]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// A CA certificate was refused.
    #[error("{}: a client CA certificate is not usable: {detail}", .path.display())]
    BadClientCa {
        /// The file.
        path: PathBuf,
        /// What rustls said.
        detail: String,
    },
    /// rustls refused the certificate and key (e.g. they do not match).
    #[error("{} and {}: {detail}", .cert.display(), .key.display())]
    Refused {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

/// The TLS side of the listener: the current `ServerConfig`, swapped as a
/// whole on reload.
pub struct TlsState {
    config: ArcSwap<ServerConfig>,
    state: Mutex<Loaded>,
}

struct Loaded {
    files: TlsFiles,
    /// Hash of the file contents the current config was built from.
    fingerprint: u64,
    /// Hash of contents that failed to load last time.
    failed: Option<u64>,
}

impl std::fmt::Debug for TlsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsState").field("files", &self.files()).finish_non_exhaustive()
    }
}

impl TlsState {
    /// Loads the files and builds the first configuration.
    pub fn load(files: TlsFiles) -> Result<Arc<TlsState>, TlsError> {
        let (config, fingerprint) = build(&files)?;
        Ok(Arc::new(TlsState {
            config: ArcSwap::from_pointee(config),
            state: Mutex::new(Loaded { files, fingerprint, failed: None }),
        }))
    }

    /// The files in use.
    pub fn files(&self) -> TlsFiles {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).files.clone()
    }

    /// Whether callers must present a client certificate.
    pub fn requires_client_certificates(&self) -> bool {
        self.files().client_ca.is_some()
    }

    /// An acceptor over the current configuration.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.load_full())
    }

    /// Re-reads the files; if their contents changed, swaps in a new
    /// configuration. `Ok(true)` when it changed. On error nothing changes.
    pub fn reload(&self) -> Result<bool, TlsError> {
        self.reload_inner(self.files(), true)
    }

    /// Like [`TlsState::reload`], but contents that already failed to load
    /// are not tried (nor reported) again until they change: for periodic
    /// checks.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        self.reload_inner(self.files(), false)
    }

    /// Like [`TlsState::reload`], with (possibly) other file paths, which
    /// are kept only if they load.
    pub fn reload_from(&self, files: TlsFiles) -> Result<bool, TlsError> {
        self.reload_inner(files, true)
    }

    fn reload_inner(&self, files: TlsFiles, retry_failed: bool) -> Result<bool, TlsError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let fingerprint = fingerprint(&files);
        if state.files == files && fingerprint.as_ref().ok() == Some(&state.fingerprint) {
            return Ok(false);
        }
        if !retry_failed && state.files == files && fingerprint.as_ref().ok().is_some_and(|f| state.failed == Some(*f))
        {
            return Ok(false);
        }
        let (config, fingerprint) = match build(&files) {
            Ok(built) => built,
            Err(e) => {
                state.failed = fingerprint.ok();
                return Err(e);
            }
        };
        self.config.store(Arc::new(config));
        info!(cert = %files.cert.display(), mtls = files.client_ca.is_some(), "TLS certificates loaded");
        *state = Loaded { files, fingerprint, failed: None };
        Ok(true)
    }
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, TlsError> {
    let read_err = |source| TlsError::Read { path: path.to_owned(), source };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if meta.len() > MAX_PEM_FILE_BYTES {
        return Err(TlsError::TooLarge { path: path.to_owned() });
    }
    let bytes = std::fs::read(path).map_err(read_err)?;
    if bytes.len() as u64 > MAX_PEM_FILE_BYTES {
        return Err(TlsError::TooLarge { path: path.to_owned() });
    }
    Ok(bytes)
}

struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

fn read_all(files: &TlsFiles) -> Result<Contents, TlsError> {
    Ok(Contents {
        cert: read_bounded(&files.cert)?,
        key: read_bounded(&files.key)?,
        client_ca: files.client_ca.as_deref().map(read_bounded).transpose()?,
    })
}

fn hash_contents(c: &Contents) -> u64 {
    let mut h = DefaultHasher::new();
    c.cert.hash(&mut h);
    c.key.hash(&mut h);
    c.client_ca.hash(&mut h);
    h.finish()
}

fn fingerprint(files: &TlsFiles) -> Result<u64, TlsError> {
    read_all(files).map(|c| hash_contents(&c))
}

/// Checks that `files` make a working TLS configuration (for start-up
/// validation, before anything is bound).
pub fn check(files: &TlsFiles) -> Result<(), TlsError> {
    build(files).map(|_| ())
}

fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TlsError::NoCertificate { path: path.to_owned() })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_owned() });
    }
    Ok(certs)
}

fn build(files: &TlsFiles) -> Result<(ServerConfig, u64), TlsError> {
    let contents = read_all(files)?;
    let fingerprint = hash_contents(&contents);
    let certs = certificates(&files.cert, &contents.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&contents.key).map_err(|_| TlsError::NoKey { path: files.key.clone() })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let refused = |e: rustls::Error| TlsError::Refused {
        cert: files.cert.clone(),
        key: files.key.clone(),
        detail: e.to_string(),
    };
    let builder =
        ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().map_err(refused)?;
    let builder = match (&files.client_ca, &contents.client_ca) {
        (Some(path), Some(pem)) => {
            let bad_ca = |detail: String| TlsError::BadClientCa { path: path.clone(), detail };
            let mut roots = RootCertStore::empty();
            for cert in certificates(path, pem)? {
                roots.add(cert).map_err(|e| bad_ca(e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| bad_ca(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(refused)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((config, fingerprint))
}
