//! The master key, and secrets sealed under it. A secret access key is
//! stored only as `nonce ‖ ChaCha20-Poly1305(secret)`, bound (as associated
//! data) to its key id, account and user: a sealed secret moved onto
//! another row, a row moved to another account or user, or an altered
//! ciphertext does not open.
//!
//! The master key comes from a file or the environment (32 bytes, base64);
//! it is never stored next to what it seals, and never logged. Without one,
//! development mode uses a well-known development key; secure mode refuses
//! to start with it.

use std::path::Path;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use sha2::Digest as _;

const NONCE_LEN: usize = 12;

/// A master key that anyone can read in this source: development only.
const DEVELOPMENT_MASTER_KEY: [u8; 32] = *b"freshet-development-master-key!!";

/// Why a master key could not be loaded or a secret not opened.
#[derive(Debug, thiserror::Error)]
pub enum SealingError {
    #[error("read the master key file {path}: {source}")]
    ReadFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the master key must be 32 bytes, base64-encoded (e.g. `head -c 32 /dev/urandom | base64`)"
    )]
    BadMasterKey,
    #[error("the secret was sealed under master key {sealed_under}, but this control plane holds {held}")]
    OtherMasterKey { sealed_under: String, held: String },
    #[error("the sealed secret does not open: altered, or sealed for another key id")]
    DoesNotOpen,
}

/// The key every access key's secret is sealed under.
pub struct MasterKey {
    cipher: ChaCha20Poly1305,
    id: String,
    development: bool,
}

impl MasterKey {
    /// The key in `file` (base64 of 32 bytes; surrounding whitespace is
    /// ignored), else `inline` (the same form), else the development key.
    pub fn load(file: Option<&Path>, inline: Option<&str>) -> Result<MasterKey, SealingError> {
        let text = match (file, inline) {
            (Some(path), _) => {
                std::fs::read_to_string(path).map_err(|source| SealingError::ReadFile {
                    path: path.display().to_string(),
                    source,
                })?
            }
            (None, Some(inline)) => inline.to_owned(),
            (None, None) => return Ok(MasterKey::development()),
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| SealingError::BadMasterKey)?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| SealingError::BadMasterKey)?;
        Ok(MasterKey::from_bytes(bytes, false))
    }

    /// The well-known development key.
    pub fn development() -> MasterKey {
        MasterKey::from_bytes(DEVELOPMENT_MASTER_KEY, true)
    }

    fn from_bytes(bytes: [u8; 32], development: bool) -> MasterKey {
        let digest = sha2::Sha256::digest(bytes);
        let id = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        MasterKey {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&bytes)),
            id,
            development,
        }
    }

    /// A short fingerprint naming this key (not secret: a hash prefix).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether this is the well-known development key.
    pub fn is_development(&self) -> bool {
        self.development
    }

    /// Seals `secret` for the key `binding` names (see [`binding`]).
    pub fn seal(&self, binding: &str, secret: &str) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: secret.as_bytes(),
                    aad: binding.as_bytes(),
                },
            )
            .expect("ChaCha20-Poly1305 seals any message shorter than 256 GiB");
        [nonce.as_slice(), &sealed].concat()
    }

    /// Opens a secret sealed for `binding` under `master_key_id`.
    pub fn open(
        &self,
        binding: &str,
        master_key_id: &str,
        sealed: &[u8],
    ) -> Result<String, SealingError> {
        if master_key_id != self.id {
            return Err(SealingError::OtherMasterKey {
                sealed_under: master_key_id.to_owned(),
                held: self.id.clone(),
            });
        }
        if sealed.len() < NONCE_LEN {
            return Err(SealingError::DoesNotOpen);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let secret = self
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: binding.as_bytes(),
                },
            )
            .map_err(|_| SealingError::DoesNotOpen)?;
        String::from_utf8(secret).map_err(|_| SealingError::DoesNotOpen)
    }
}

/// What a sealed secret is bound to: its key id, account and user (empty
/// for the root), so it opens only on the row it was sealed for.
pub fn binding(access_key_id: &str, account: &str, user: Option<&str>) -> String {
    format!("{access_key_id}\n{account}\n{}", user.unwrap_or(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> MasterKey {
        MasterKey::from_bytes([byte; 32], false)
    }

    #[test]
    fn a_sealed_secret_opens_only_for_its_key_id_under_its_master_key() {
        let master = key(1);
        let sealed = master.seal("AKIAFIRST0000000", "s3cret");
        assert!(!sealed.windows(6).any(|w| w == b"s3cret"), "not plaintext");
        assert_eq!(
            master
                .open("AKIAFIRST0000000", master.id(), &sealed)
                .expect("opens"),
            "s3cret"
        );
        assert!(matches!(
            master.open("AKIASECOND000000", master.id(), &sealed),
            Err(SealingError::DoesNotOpen)
        ));
        let other = key(2);
        assert!(matches!(
            other.open("AKIAFIRST0000000", master.id(), &sealed),
            Err(SealingError::OtherMasterKey { .. })
        ));
        let mut altered = sealed.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert!(matches!(
            master.open("AKIAFIRST0000000", master.id(), &altered),
            Err(SealingError::DoesNotOpen)
        ));
        assert!(matches!(
            master.open("AKIAFIRST0000000", master.id(), &sealed[..5]),
            Err(SealingError::DoesNotOpen)
        ));
    }

    #[test]
    fn a_secret_moved_to_another_account_or_user_does_not_open() {
        let master = key(1);
        let sealed = master.seal(&binding("AKIAFIRST0000000", "111122223333", None), "s");
        for moved in [
            binding("AKIAFIRST0000000", "444455556666", None),
            binding("AKIAFIRST0000000", "111122223333", Some("bob")),
        ] {
            assert!(matches!(
                master.open(&moved, master.id(), &sealed),
                Err(SealingError::DoesNotOpen)
            ));
        }
    }

    #[test]
    fn sealing_twice_gives_different_bytes() {
        let master = key(1);
        assert_ne!(master.seal("A", "s"), master.seal("A", "s"));
    }

    #[test]
    fn master_keys_load_from_base64_of_32_bytes() {
        let text = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let loaded = MasterKey::load(None, Some(&format!("  {text}\n"))).expect("loads");
        assert_eq!(loaded.id(), key(7).id());
        assert!(!loaded.is_development());
        let short = base64::engine::general_purpose::STANDARD.encode([7u8; 31]);
        assert!(matches!(
            MasterKey::load(None, Some(&short)),
            Err(SealingError::BadMasterKey)
        ));
        assert!(MasterKey::load(None, None)
            .expect("development")
            .is_development());
    }
}
