//! Shard iterators and pagination tokens: opaque to clients, tamper-evident
//! (an HMAC-SHA256 tag under a key every frontend shares), and stamped with
//! the time they were issued so they can expire.
//!
//! Iterator layout before base64: `1 | issued_ms | stream_uid |
//! stream_created_ms | position kind | position | account | stream | shard | tag[16]`,
//! integers big-endian, strings length-prefixed with one byte.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const VERSION: u8 = 1;
const TAG_LEN: usize = 16;

/// Where a shard iterator points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// The first record at or after this offset.
    AtOffset(u64),
    /// The first record that arrived at or after this time.
    AtTimestampMs(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardIterator {
    pub issued_ms: i64,
    pub stream_uid: i64,
    pub stream_created_ms: i64,
    pub position: Position,
    pub account_id: String,
    pub stream_name: String,
    pub shard_id: String,
}

/// Signs and verifies iterators and tokens.
#[derive(Clone)]
pub struct TokenSigner {
    key: Vec<u8>,
}

fn push_str(out: &mut Vec<u8>, text: &str) {
    let bytes = &text.as_bytes()[..text.len().min(255)];
    out.push(bytes.len() as u8);
    out.extend_from_slice(bytes);
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn i64(&mut self) -> Option<i64> {
        self.take(8)
            .map(|b| i64::from_be_bytes(b.try_into().expect("8 bytes")))
    }
    fn string(&mut self) -> Option<String> {
        let len = self.u8()? as usize;
        self.take(len)
            .and_then(|b| std::str::from_utf8(b).ok())
            .map(str::to_owned)
    }
}

impl TokenSigner {
    pub fn new(key: &[u8]) -> TokenSigner {
        TokenSigner { key: key.to_vec() }
    }

    fn tag(&self, payload: &[u8]) -> [u8; TAG_LEN] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("hmac takes any key length");
        mac.update(payload);
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        tag
    }

    /// Appends the tag and base64-encodes.
    pub fn seal(&self, mut payload: Vec<u8>) -> String {
        let tag = self.tag(&payload);
        payload.extend_from_slice(&tag);
        STANDARD.encode(payload)
    }

    /// Decodes and checks the tag; `None` if anything is off.
    pub fn open(&self, token: &str) -> Option<Vec<u8>> {
        // Real Kinesis tolerates an iterator wrapped in quotes.
        let token = token.trim().trim_matches('"');
        let mut bytes = STANDARD.decode(token).ok()?;
        if bytes.len() < TAG_LEN {
            return None;
        }
        let tag = bytes.split_off(bytes.len() - TAG_LEN);
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("hmac takes any key length");
        mac.update(&bytes);
        mac.verify_truncated_left(&tag).ok()?;
        Some(bytes)
    }

    pub fn encode_iterator(&self, iterator: &ShardIterator) -> String {
        let mut out = vec![VERSION];
        out.extend_from_slice(&iterator.issued_ms.to_be_bytes());
        out.extend_from_slice(&iterator.stream_uid.to_be_bytes());
        out.extend_from_slice(&iterator.stream_created_ms.to_be_bytes());
        match iterator.position {
            Position::AtOffset(offset) => {
                out.push(0);
                out.extend_from_slice(&offset.to_be_bytes());
            }
            Position::AtTimestampMs(ms) => {
                out.push(1);
                out.extend_from_slice(&ms.to_be_bytes());
            }
        }
        push_str(&mut out, &iterator.account_id);
        push_str(&mut out, &iterator.stream_name);
        push_str(&mut out, &iterator.shard_id);
        self.seal(out)
    }

    pub fn decode_iterator(&self, token: &str) -> Option<ShardIterator> {
        let bytes = self.open(token)?;
        let mut reader = Reader(&bytes);
        if reader.u8()? != VERSION {
            return None;
        }
        let issued_ms = reader.i64()?;
        let stream_uid = reader.i64()?;
        let stream_created_ms = reader.i64()?;
        let position = match reader.u8()? {
            0 => Position::AtOffset(reader.i64()? as u64),
            1 => Position::AtTimestampMs(reader.i64()?),
            _ => return None,
        };
        let iterator = ShardIterator {
            issued_ms,
            stream_uid,
            stream_created_ms,
            position,
            account_id: reader.string()?,
            stream_name: reader.string()?,
            shard_id: reader.string()?,
        };
        reader.0.is_empty().then_some(iterator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iterator() -> ShardIterator {
        ShardIterator {
            issued_ms: 1_700_000_000_000,
            stream_uid: 42,
            stream_created_ms: 1_690_000_000_000,
            position: Position::AtOffset(17),
            account_id: "000000000000".into(),
            stream_name: "x".repeat(128),
            shard_id: "shardId-000000000003".into(),
        }
    }

    #[test]
    fn iterators_round_trip_and_fit_the_512_character_limit() {
        let signer = TokenSigner::new(b"secret");
        let token = signer.encode_iterator(&iterator());
        assert!(token.len() <= 512, "{} characters", token.len());
        assert_eq!(signer.decode_iterator(&token), Some(iterator()));
        assert_eq!(
            signer.decode_iterator(&format!("\"{token}\"")),
            Some(iterator())
        );
    }

    #[test]
    fn a_tampered_iterator_is_rejected() {
        let signer = TokenSigner::new(b"secret");
        let token = signer.encode_iterator(&iterator());
        let mut bytes = STANDARD.decode(&token).unwrap();
        bytes[20] ^= 1;
        assert_eq!(signer.decode_iterator(&STANDARD.encode(bytes)), None);
        assert_eq!(TokenSigner::new(b"other").decode_iterator(&token), None);
        assert_eq!(signer.decode_iterator("not base64!"), None);
    }
}
