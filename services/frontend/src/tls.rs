//! The HTTPS listener beside the plaintext one: its flags, and the
//! certificate it presents — files an operator manages (reloaded when they
//! change or on SIGHUP), or in development a CA and certificate made once
//! in a directory (`freshet_tls::ensure_dev_pki`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

/// How often the certificate files are looked at for changes.
const CERT_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// The names a development certificate is made for.
const DEV_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsFlags {
    /// Where to serve HTTPS (HTTP/1.1 and HTTP/2 by ALPN, HTTP/2 without
    /// ALPN too), beside the plaintext listener. Unset: no HTTPS.
    #[arg(
        id = "tls_listen",
        long = "tls-listen",
        env = "FRESHET_TLS_LISTEN",
        value_name = "HOST:PORT"
    )]
    pub listen: Option<String>,
    /// The certificate chain (PEM) the HTTPS listener presents.
    #[arg(
        id = "tls_cert",
        long = "tls-cert",
        env = "FRESHET_TLS_CERT",
        requires_all = ["tls_key", "tls_listen"]
    )]
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(
        id = "tls_key",
        long = "tls-key",
        env = "FRESHET_TLS_KEY",
        requires = "tls_cert"
    )]
    pub key: Option<PathBuf>,
    /// Development: make a CA and a certificate for localhost in this
    /// directory on first run (kept after), and present that.
    #[arg(
        id = "tls_dev_dir",
        long = "tls-dev-dir",
        env = "FRESHET_TLS_DEV_DIR",
        requires = "tls_listen",
        conflicts_with = "tls_cert"
    )]
    pub dev_dir: Option<PathBuf>,
}

/// Why the HTTPS listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("--tls-listen needs --tls-cert and --tls-key, or --tls-dev-dir")]
    NoCertificate,
    #[error(transparent)]
    Tls(#[from] freshet_tls::TlsError),
    #[error("bind the https listener on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

/// A bound HTTPS listener, its acceptor, and the task that reloads its
/// certificate (stopped when this is dropped).
pub struct HttpsListener {
    pub listener: TcpListener,
    pub acceptor: freshet_tls::TlsAcceptor,
    pub certificate: Arc<freshet_tls::ReloadingCert>,
    _reloads: tokio_util::task::AbortOnDropHandle<()>,
}

impl TlsFlags {
    /// Binds the HTTPS listener the flags ask for, if any.
    pub async fn bind(&self) -> Result<Option<HttpsListener>, TlsSetupError> {
        let Some(addr) = &self.listen else {
            return Ok(None);
        };
        let files = match (&self.cert, &self.key, &self.dev_dir) {
            (Some(cert), Some(key), _) => freshet_tls::CertFiles {
                cert: cert.clone(),
                key: key.clone(),
            },
            (_, _, Some(dir)) => {
                let pki = freshet_tls::ensure_dev_pki(dir, &DEV_NAMES)?;
                tracing::info!(
                    ca = %pki.ca.display(),
                    "development TLS: trust this CA, e.g. AWS_CA_BUNDLE={0} or NODE_EXTRA_CA_CERTS={0}",
                    pki.ca.display()
                );
                pki.server
            }
            _ => return Err(TlsSetupError::NoCertificate),
        };
        let certificate = freshet_tls::ReloadingCert::load(files)?;
        let acceptor = freshet_tls::acceptor(certificate.clone())?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| TlsSetupError::Bind {
                addr: addr.clone(),
                source,
            })?;
        let reloads = tokio::spawn(certificate.clone().watch(CERT_CHECK_INTERVAL));
        Ok(Some(HttpsListener {
            listener,
            acceptor,
            certificate,
            _reloads: tokio_util::task::AbortOnDropHandle::new(reloads),
        }))
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn the_frontend_flags_are_well_formed() {
        // Clap checks ids, requires and conflicts only when asked (or at
        // the binary's first start): every flag of the frontend, TLS's
        // among them.
        crate::Config::command().debug_assert();
    }

    #[test]
    fn https_takes_files_or_a_development_directory() {
        use clap::Parser as _;
        let parse = |args: &[&str]| {
            crate::Config::try_parse_from(["freshet-frontend"].iter().chain(args).copied())
        };
        let files = parse(&[
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
        ])
        .expect("files");
        assert_eq!(
            files.tls.cert.as_deref(),
            Some(std::path::Path::new("c.pem"))
        );
        assert!(
            parse(&["--tls-cert", "c.pem"]).is_err(),
            "a certificate without its key"
        );
        assert!(
            parse(&[
                "--tls-cert",
                "c.pem",
                "--tls-key",
                "k.pem",
                "--tls-dev-dir",
                "d"
            ])
            .is_err(),
            "files and a development directory"
        );
    }
}
