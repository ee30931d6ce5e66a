//! The development CA: made once in a directory (`ca.pem`, `ca-key.pem`),
//! then a server certificate it signs for the names a development
//! deployment answers on (`server.pem`, `server-key.pem`). Clients trust
//! `ca.pem` (`AWS_CA_BUNDLE`, `NODE_EXTRA_CA_CERTS`). Files are written
//! 0600 in a 0700 directory; existing ones are kept, so the CA a developer
//! trusted once stays valid across runs.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::{CertFiles, TlsError};

/// The files of a development deployment's TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevPki {
    /// What clients trust.
    pub ca: PathBuf,
    /// What the front door presents.
    pub server: CertFiles,
}

/// Makes (or finds) the development CA and a server certificate for
/// `names` (DNS names or IP addresses) in `dir`.
pub fn ensure_dev_pki(dir: &Path, names: &[&str]) -> Result<DevPki, TlsError> {
    let failed = |error: &dyn std::fmt::Display| TlsError::Generate(error.to_string());
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| failed(&e))?;
    let pki = DevPki {
        ca: dir.join("ca.pem"),
        server: CertFiles {
            cert: dir.join("server.pem"),
            key: dir.join("server-key.pem"),
        },
    };
    let ca_key_path = dir.join("ca-key.pem");
    let ca_key = match fs::read_to_string(&ca_key_path) {
        Ok(pem) if pki.ca.exists() => KeyPair::from_pem(&pem).map_err(|e| failed(&e))?,
        _ => {
            // A new CA: any server certificate of an old one is stale, and
            // goes first, so a crash midway never leaves one behind.
            for stale in [&pki.server.cert, &pki.server.key] {
                match fs::remove_file(stale) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(failed(&e)),
                    _ => {}
                }
            }
            let key = KeyPair::generate().map_err(|e| failed(&e))?;
            let ca = ca_params().self_signed(&key).map_err(|e| failed(&e))?;
            write_private(&ca_key_path, &key.serialize_pem())?;
            write_private(&pki.ca, &ca.pem())?;
            key
        }
    };
    if pki.server.cert.exists() && pki.server.key.exists() {
        return Ok(pki);
    }
    // The CA's parameters are made the same way every time, so with its
    // key they sign as the certificate clients already trust.
    let issuer = Issuer::new(ca_params(), ca_key);
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut params = CertificateParams::new(names).map_err(|e| failed(&e))?;
    params.distinguished_name = name("Freshet development server");
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().map_err(|e| failed(&e))?;
    let cert = params.signed_by(&key, &issuer).map_err(|e| failed(&e))?;
    write_private(&pki.server.key, &key.serialize_pem())?;
    write_private(&pki.server.cert, &cert.pem())?;
    Ok(pki)
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = name("Freshet development CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name.push(DnType::OrganizationName, "Freshet");
    name
}

/// Writes `contents` to a new file only its owner may read, replacing
/// any file there.
fn write_private(path: &Path, contents: &str) -> Result<(), TlsError> {
    let failed = |source| TlsError::Read {
        what: "a development certificate file",
        path: path.to_owned(),
        source,
    };
    let _ = fs::remove_file(path);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(failed)?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(failed)
}
