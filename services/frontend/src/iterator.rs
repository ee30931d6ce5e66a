//! Shard iterators and pagination tokens: opaque to clients, tamper-evident
//! (an HMAC-SHA256 tag under a key every frontend shares), and stamped with
//! the time they were issued so they can expire.
//!
//! A token is `key id | payload | tag[16]` in base64. The key id names the
//! key that signed it (its SHA-256's first byte), so keys can rotate: a new
//! key signs, the previous ones (`FRESHET_ITERATOR_PREVIOUS_SECRETS`) still
//! verify until what they signed has expired. The tag covers a domain byte
//! too, so an iterator never opens as a NextToken or the other way round.
//!
//! Iterator payload: `2 | issued_ms | stream_uid | stream_created_ms |
//! position kind | position | account | region | stream | shard`, integers
//! big-endian, strings length-prefixed with one byte.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use freshet_types::StreamArn;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Version 2 added the stream's region.
const VERSION: u8 = 2;
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
    /// The stream read (its account, region and name).
    pub stream: StreamArn,
    pub shard_id: String,
}

/// What a token is for; part of what its tag covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    ShardIterator,
    NextToken,
}

impl Domain {
    fn byte(self) -> u8 {
        match self {
            Domain::ShardIterator => b'I',
            Domain::NextToken => b'N',
        }
    }
}

/// One signing key and its id.
#[derive(Clone)]
struct Key {
    id: u8,
    secret: Vec<u8>,
}

impl Key {
    fn new(secret: &[u8]) -> Key {
        use sha2::Digest as _;
        Key {
            id: Sha256::digest(secret)[0],
            secret: secret.to_vec(),
        }
    }

    fn mac(&self, domain: Domain, signed: &[u8]) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.secret).expect("hmac takes any key length");
        mac.update(&[domain.byte()]);
        mac.update(signed);
        mac
    }
}

/// Signs and verifies iterators and tokens: the current key signs, it and
/// the previous keys verify.
#[derive(Clone)]
pub struct TokenSigner {
    current: Key,
    previous: Vec<Key>,
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
        TokenSigner::rotating(key, &[])
    }

    /// Signs with `current`; also accepts what `previous` keys signed.
    pub fn rotating(current: &[u8], previous: &[&[u8]]) -> TokenSigner {
        TokenSigner {
            current: Key::new(current),
            previous: previous.iter().map(|key| Key::new(key)).collect(),
        }
    }

    /// Signs `payload` for `domain` and base64-encodes it with the key id.
    pub fn seal(&self, domain: Domain, payload: &[u8]) -> String {
        let mut signed = Vec::with_capacity(1 + payload.len() + TAG_LEN);
        signed.push(self.current.id);
        signed.extend_from_slice(payload);
        let tag = self.current.mac(domain, &signed).finalize().into_bytes();
        signed.extend_from_slice(&tag[..TAG_LEN]);
        STANDARD.encode(signed)
    }

    /// The payload of a token sealed for `domain` by a known key; `None`
    /// if anything is off.
    pub fn open(&self, domain: Domain, token: &str) -> Option<Vec<u8>> {
        // Real Kinesis tolerates an iterator wrapped in quotes.
        let token = token.trim().trim_matches('"');
        let mut bytes = STANDARD.decode(token).ok()?;
        if bytes.len() < 1 + TAG_LEN {
            return None;
        }
        let tag = bytes.split_off(bytes.len() - TAG_LEN);
        let key_id = bytes[0];
        let opened = std::iter::once(&self.current)
            .chain(&self.previous)
            .filter(|key| key.id == key_id)
            .any(|key| key.mac(domain, &bytes).verify_truncated_left(&tag).is_ok());
        opened.then(|| bytes.split_off(1))
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
        push_str(&mut out, &iterator.stream.account_id);
        push_str(&mut out, &iterator.stream.region);
        push_str(&mut out, &iterator.stream.stream_name);
        push_str(&mut out, &iterator.shard_id);
        self.seal(Domain::ShardIterator, &out)
    }

    pub fn decode_iterator(&self, token: &str) -> Option<ShardIterator> {
        let bytes = self.open(Domain::ShardIterator, token)?;
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
            stream: {
                let (account, region, name) =
                    (reader.string()?, reader.string()?, reader.string()?);
                StreamArn::new(&region, &account, &name)
            },
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
            stream: StreamArn::new("ap-southeast-2", "000000000000", &"x".repeat(128)),
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
    fn rotated_keys_still_open_what_they_signed_and_domains_stay_apart() {
        let old = TokenSigner::new(b"old secret");
        let token = old.encode_iterator(&iterator());
        let rotated = TokenSigner::rotating(b"new secret", &[b"old secret"]);
        assert_eq!(rotated.decode_iterator(&token), Some(iterator()));
        let fresh = rotated.encode_iterator(&iterator());
        assert_eq!(old.decode_iterator(&fresh), None, "the new key signs");
        assert_eq!(
            TokenSigner::new(b"new secret").decode_iterator(&token),
            None,
            "once the old key is retired"
        );
        let page = rotated.seal(Domain::NextToken, b"{\"s\":\"x\"}");
        assert!(rotated.open(Domain::NextToken, &page).is_some());
        assert_eq!(rotated.open(Domain::ShardIterator, &page), None);
        assert_eq!(rotated.open(Domain::NextToken, &fresh), None);
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
