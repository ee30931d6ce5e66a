//! `freshet-tls`: TLS for Freshet's front door — a server certificate read
//! from PEM files and read again when they change (or on SIGHUP), offered
//! with ALPN `h2` and `http/1.1` — and the development CA that `just dev`
//! makes on first run (`dev.rs`). rustls with ring: no OpenSSL.
//!
//! Reloading never breaks serving: a certificate that fails to load (a
//! half-written file, a key that does not match) is logged and the one in
//! use stays. Each handshake takes the current certificate, so connections
//! opened after a reload present the new one and open ones are unaffected.

mod dev;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub use dev::{ensure_dev_pki, DevPki};
pub use tokio_rustls::TlsAcceptor;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no {what}")]
    Missing { what: &'static str, path: PathBuf },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("make the development certificates: {0}")]
    Generate(String),
}

/// Where a server's certificate chain and private key are, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// The certificate first, then any intermediates.
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// When the files were last changed, as far as reloading cares: each
/// file's inode, length, and modification and change times (a copy that
/// keeps the modification time still changes the change time; a rename
/// over the file changes the inode).
type Stamp = Option<[FileStamp; 2]>;
type FileStamp = (u64, u64, i64, i64, i64, i64);

/// A server certificate that can be read again from its files.
#[derive(Debug)]
pub struct ReloadingCert {
    files: CertFiles,
    current: RwLock<(Arc<CertifiedKey>, Stamp)>,
}

impl ReloadingCert {
    /// Reads the certificate and key (an error if they do not load).
    pub fn load(files: CertFiles) -> Result<Arc<ReloadingCert>, TlsError> {
        let stamp = stamp_of(&files);
        let key = certified_key(&files)?;
        Ok(Arc::new(ReloadingCert {
            files,
            current: RwLock::new((key, stamp)),
        }))
    }

    /// Reads the files again if they changed since they were last read;
    /// whether a new certificate is now in use. On an error the current
    /// one stays.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let stamp = stamp_of(&self.files);
        if stamp == self.read().1 {
            return Ok(false);
        }
        self.reload_with(stamp).map(|()| true).inspect_err(|_| {
            // Files that do not load are reported once, not at every
            // look: they are tried again when they change.
            self.current.write().unwrap_or_else(|p| p.into_inner()).1 = stamp;
        })
    }

    /// Reads the files again, changed or not (SIGHUP).
    pub fn reload(&self) -> Result<(), TlsError> {
        self.reload_with(stamp_of(&self.files))
    }

    fn reload_with(&self, stamp: Stamp) -> Result<(), TlsError> {
        let key = certified_key(&self.files)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = (key, stamp);
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, (Arc<CertifiedKey>, Stamp)> {
        self.current.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The certificate in use (DER of the leaf), for tests and logs.
    pub fn leaf(&self) -> Option<CertificateDer<'static>> {
        self.read().0.cert.first().cloned()
    }

    /// Reloads on SIGHUP, and whenever the files change (looked at every
    /// `every`), until the task is dropped. Failures are logged; the
    /// certificate in use stays.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        let mut hangups =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let hangup = async {
                match hangups.as_mut() {
                    Some(signals) => signals.recv().await,
                    None => std::future::pending().await,
                }
            };
            let outcome = tokio::select! {
                _ = hangup => self.reload().map(|()| true),
                _ = ticks.tick() => self.reload_if_changed(),
            };
            match outcome {
                Ok(true) => {
                    tracing::info!(cert = %self.files.cert.display(), "tls certificate reloaded")
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(%error, "tls certificate not reloaded; the previous one stays")
                }
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.read().0.clone())
    }
}

/// An acceptor presenting `cert`, offering HTTP/2 and HTTP/1.1 by ALPN. A
/// client that offers no ALPN (older Java SDKs) still gets its connection;
/// the HTTP server then tells HTTP/2 from HTTP/1.1 by the first bytes.
pub fn acceptor(cert: Arc<ReloadingCert>) -> Result<TlsAcceptor, TlsError> {
    let provider = Arc::new(crypto_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError::Invalid {
            path: cert.files.cert.clone(),
            reason: error.to_string(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// rustls with ring. rustls now marks ring's provider deprecated because
/// it lacks post-quantum key exchange (aws-lc-rs has it); ring keeps the
/// build lean — no C toolchain beyond what ring needs, minutes less on
/// two cores — and every TLS 1.3 and 1.2 suite Kinesis clients use.
#[allow(deprecated)]
pub fn crypto_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn stamp_of(files: &CertFiles) -> Stamp {
    use std::os::unix::fs::MetadataExt as _;
    let of = |path: &Path| {
        fs::metadata(path).ok().map(|m| {
            (
                m.ino(),
                m.len(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec(),
            )
        })
    };
    Some([of(&files.cert)?, of(&files.key)?])
}

/// Reads the chain and the key, and checks that they belong together.
fn certified_key(files: &CertFiles) -> Result<Arc<CertifiedKey>, TlsError> {
    let read = |what: &'static str, path: &Path| {
        fs::read(path).map_err(|source| TlsError::Read {
            what,
            path: path.to_owned(),
            source,
        })
    };
    let cert_pem = read("certificate", &files.cert)?;
    let key_pem = read("private key", &files.key)?;
    let invalid = |path: &Path, reason: String| TlsError::Invalid {
        path: path.to_owned(),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| invalid(&files.cert, error.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::Missing {
            what: "certificate",
            path: files.cert.clone(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|error| invalid(&files.key, format!("no private key in PEM form ({error})")))?;
    let provider = crypto_provider();
    let certified = CertifiedKey::from_der(chain, key, &provider)
        .map_err(|error| invalid(&files.key, error.to_string()))?;
    Ok(Arc::new(certified))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_is_reloaded_when_its_files_change_and_kept_when_they_break() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = ensure_dev_pki(dir.path(), &["localhost"]).expect("dev pki");
        let cert = ReloadingCert::load(first.server.clone()).expect("load");
        let before = cert.leaf().expect("a leaf");
        assert!(!cert.reload_if_changed().expect("unchanged"));

        // A new certificate for the same names replaces the files: the next
        // look picks it up.
        fs::remove_file(&first.server.cert).expect("remove");
        let again = ensure_dev_pki(dir.path(), &["localhost"]).expect("dev pki");
        assert_eq!(again.ca, first.ca, "the CA is kept");
        assert!(cert.reload_if_changed().expect("changed"));
        let after = cert.leaf().expect("a leaf");
        assert_ne!(before, after);

        // A broken file is refused, and the certificate in use stays.
        fs::write(&first.server.key, b"not a key").expect("write");
        assert!(cert.reload_if_changed().is_err());
        assert_eq!(cert.leaf(), Some(after));
    }

    #[test]
    fn a_key_that_does_not_match_the_certificate_is_refused() {
        let one = tempfile::tempdir().expect("tempdir");
        let two = tempfile::tempdir().expect("tempdir");
        let a = ensure_dev_pki(one.path(), &["localhost"]).expect("dev pki");
        let b = ensure_dev_pki(two.path(), &["localhost"]).expect("dev pki");
        let mixed = CertFiles {
            cert: a.server.cert,
            key: b.server.key,
        };
        assert!(ReloadingCert::load(mixed).is_err());
    }
}
