//! CBOR 1.1 (`application/x-amz-cbor-1.1`), the Java SDK's default for
//! Kinesis (so KCL's, Flink's and Spark's). A CBOR request is read into the
//! JSON form the operations parse, and their JSON reply is written back as
//! CBOR: both wire forms share one typed model of every operation.
//!
//! Where the two forms differ, the API model says how, by member name
//! (the botocore model has no member name used with two types; a test in
//! `tests/tests/cbor.rs` checks that against it):
//! - blobs (`Data`) are CBOR byte strings, base64 text in JSON;
//! - timestamps are tag 1 with an integer of epoch **milliseconds**, as the
//!   Java SDK writes and reads them (`SdkCborGenerator`), epoch seconds in
//!   JSON. A tagged floating-point value is read as seconds (RFC 8949's
//!   tag 1).
//!
//! Reading costs memory bounded by the body: nothing is allocated from a
//! length the input claims before that many bytes are there, and nesting
//! deeper than [`MAX_DEPTH`] is refused.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use minicbor::data::{Tag, Type};
use minicbor::{Decoder, Encoder};
use serde_json::{Map, Number, Value};

/// The content type of CBOR requests and replies.
pub const CONTENT_TYPE: &str = "application/x-amz-cbor-1.1";

/// Members whose values are blobs.
const BLOB_MEMBERS: &[&str] = &["Data"];

/// Members whose values are timestamps.
pub const TIMESTAMP_MEMBERS: &[&str] = &[
    "ApproximateArrivalTimestamp",
    "ConsumerCreationTimestamp",
    "EarliestAllowedEndAt",
    "EndedAt",
    "StartedAt",
    "StreamCreationTimestamp",
    "Timestamp",
];

/// The deepest nesting a request may have (Kinesis's deepest input is
/// three levels).
const MAX_DEPTH: usize = 32;

/// CBOR's tag for an epoch-based date/time.
const EPOCH_TAG: u64 = 1;

/// The wire form of a request, and so of its reply (and of the events of
/// its event stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `application/x-amz-json-1.1`.
    Json,
    /// `application/x-amz-cbor-1.1`.
    Cbor,
}

/// The JSON protocol's content type.
pub const JSON_CONTENT_TYPE: &str = "application/x-amz-json-1.1";

impl Protocol {
    pub fn content_type(self) -> &'static str {
        match self {
            Protocol::Json => JSON_CONTENT_TYPE,
            Protocol::Cbor => CONTENT_TYPE,
        }
    }

    /// A reply (or event payload) the operations wrote as JSON, in this
    /// protocol.
    pub fn encode(self, json: Vec<u8>) -> Result<Vec<u8>, CborError> {
        match self {
            Protocol::Json => Ok(json),
            Protocol::Cbor => reply_as_cbor(&json),
        }
    }
}

/// Why a CBOR body could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CborError {
    #[error("malformed CBOR: {0}")]
    Malformed(String),
    #[error("CBOR nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("unsupported CBOR {0}")]
    Unsupported(String),
    #[error("the reply is not JSON: {0}")]
    Reply(String),
}

impl From<minicbor::decode::Error> for CborError {
    fn from(error: minicbor::decode::Error) -> CborError {
        CborError::Malformed(error.to_string())
    }
}

/// What kind of member a value belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Member {
    Blob,
    Timestamp,
    Other,
}

fn member_kind(name: &str) -> Member {
    if BLOB_MEMBERS.contains(&name) {
        Member::Blob
    } else if TIMESTAMP_MEMBERS.contains(&name) {
        Member::Timestamp
    } else {
        Member::Other
    }
}

/// Reads a CBOR request body into the JSON text the operations parse.
/// An empty body is an empty request.
pub fn request_as_json(body: &[u8]) -> Result<Vec<u8>, CborError> {
    if body.is_empty() {
        return Ok(b"{}".to_vec());
    }
    let mut decoder = Decoder::new(body);
    let value = read_value(&mut decoder, Member::Other, 0)?;
    if decoder.position() != body.len() {
        return Err(CborError::Malformed(
            "trailing bytes after the request".to_owned(),
        ));
    }
    serde_json::to_vec(&value).map_err(|error| CborError::Malformed(error.to_string()))
}

fn number(value: f64) -> Result<Value, CborError> {
    Number::from_f64(value)
        .map(Value::Number)
        .ok_or_else(|| CborError::Unsupported("non-finite number".to_owned()))
}

/// A timestamp member's value, as JSON's epoch seconds: an integer is
/// milliseconds (the Java SDK's form), a float is seconds.
fn timestamp(decoder: &mut Decoder<'_>) -> Result<Value, CborError> {
    match decoder.datatype()? {
        Type::U8
        | Type::U16
        | Type::U32
        | Type::U64
        | Type::I8
        | Type::I16
        | Type::I32
        | Type::I64 => number(decoder.i64()? as f64 / 1000.0),
        Type::F16 | Type::F32 | Type::F64 => number(decoder.f64()?),
        other => Err(CborError::Unsupported(format!("timestamp of type {other}"))),
    }
}

fn read_value(decoder: &mut Decoder<'_>, member: Member, depth: usize) -> Result<Value, CborError> {
    if depth > MAX_DEPTH {
        return Err(CborError::TooDeep);
    }
    if member == Member::Timestamp && decoder.datatype()? != Type::Tag {
        return timestamp(decoder);
    }
    Ok(match decoder.datatype()? {
        Type::Bool => Value::Bool(decoder.bool()?),
        Type::Null => {
            decoder.null()?;
            Value::Null
        }
        Type::Undefined => {
            decoder.undefined()?;
            Value::Null
        }
        Type::U8 | Type::U16 | Type::U32 | Type::U64 => Value::from(decoder.u64()?),
        Type::I8 | Type::I16 | Type::I32 | Type::I64 => Value::from(decoder.i64()?),
        Type::F16 | Type::F32 | Type::F64 => number(decoder.f64()?)?,
        Type::Bytes => Value::String(STANDARD.encode(decoder.bytes()?)),
        Type::BytesIndef => {
            let mut bytes = Vec::new();
            for chunk in decoder.bytes_iter()? {
                bytes.extend_from_slice(chunk?);
            }
            Value::String(STANDARD.encode(bytes))
        }
        Type::String => Value::String(decoder.str()?.to_owned()),
        Type::StringIndef => {
            let mut text = String::new();
            for chunk in decoder.str_iter()? {
                text.push_str(chunk?);
            }
            Value::String(text)
        }
        Type::Array | Type::ArrayIndef => {
            let length = decoder.array()?;
            // Grown as items arrive: a claimed length costs nothing.
            let mut items = Vec::new();
            let mut read = 0u64;
            loop {
                let done = match length {
                    Some(length) => read == length,
                    None => decoder.datatype()? == Type::Break,
                };
                if done {
                    break;
                }
                items.push(read_value(decoder, Member::Other, depth + 1)?);
                read += 1;
            }
            if length.is_none() {
                decoder.skip()?;
            }
            Value::Array(items)
        }
        Type::Map | Type::MapIndef => {
            let length = decoder.map()?;
            let mut map = Map::new();
            let mut read = 0u64;
            loop {
                let done = match length {
                    Some(length) => read == length,
                    None => decoder.datatype()? == Type::Break,
                };
                if done {
                    break;
                }
                let key = match decoder.datatype()? {
                    Type::String => decoder.str()?.to_owned(),
                    other => {
                        return Err(CborError::Unsupported(format!("map key of type {other}")))
                    }
                };
                let value = read_value(decoder, member_kind(&key), depth + 1)?;
                map.insert(key, value);
                read += 1;
            }
            if length.is_none() {
                decoder.skip()?;
            }
            Value::Object(map)
        }
        Type::Tag => {
            let tag = decoder.tag()?;
            if tag == Tag::new(EPOCH_TAG) {
                timestamp(decoder)?
            } else if matches!(u64::from(tag), 2 | 3) {
                return Err(CborError::Unsupported("bignum".to_owned()));
            } else {
                // Other tags say nothing the model needs: the value counts.
                read_value(decoder, member, depth + 1)?
            }
        }
        other => return Err(CborError::Unsupported(format!("item of type {other}"))),
    })
}

/// Writes a reply's JSON text as CBOR.
pub fn reply_as_cbor(json: &[u8]) -> Result<Vec<u8>, CborError> {
    let value: Value =
        serde_json::from_slice(json).map_err(|error| CborError::Reply(error.to_string()))?;
    value_as_cbor(&value)
}

/// Writes a JSON value as CBOR.
pub fn value_as_cbor(value: &Value) -> Result<Vec<u8>, CborError> {
    let mut encoder = Encoder::new(Vec::new());
    write_value(&mut encoder, value, Member::Other)?;
    Ok(encoder.into_writer())
}

fn write_error(error: impl std::fmt::Display) -> CborError {
    CborError::Reply(error.to_string())
}

fn write_value(
    encoder: &mut Encoder<Vec<u8>>,
    value: &Value,
    member: Member,
) -> Result<(), CborError> {
    match (member, value) {
        (Member::Blob, Value::String(text)) => {
            let bytes = STANDARD.decode(text).map_err(write_error)?;
            encoder.bytes(&bytes).map_err(write_error)?;
        }
        (Member::Timestamp, Value::Number(seconds)) => {
            let seconds = seconds
                .as_f64()
                .ok_or_else(|| CborError::Reply("timestamp out of range".to_owned()))?;
            encoder
                .tag(Tag::new(EPOCH_TAG))
                .map_err(write_error)?
                .i64((seconds * 1000.0).round() as i64)
                .map_err(write_error)?;
        }
        (_, Value::Null) => {
            encoder.null().map_err(write_error)?;
        }
        (_, Value::Bool(flag)) => {
            encoder.bool(*flag).map_err(write_error)?;
        }
        (_, Value::Number(number)) => {
            if let Some(n) = number.as_u64() {
                encoder.u64(n).map_err(write_error)?;
            } else if let Some(n) = number.as_i64() {
                encoder.i64(n).map_err(write_error)?;
            } else {
                encoder
                    .f64(number.as_f64().unwrap_or(0.0))
                    .map_err(write_error)?;
            }
        }
        (_, Value::String(text)) => {
            encoder.str(text).map_err(write_error)?;
        }
        (_, Value::Array(items)) => {
            encoder.array(items.len() as u64).map_err(write_error)?;
            for item in items {
                write_value(encoder, item, Member::Other)?;
            }
        }
        (_, Value::Object(map)) => {
            encoder.map(map.len() as u64).map_err(write_error)?;
            for (key, item) in map {
                encoder.str(key).map_err(write_error)?;
                write_value(encoder, item, member_kind(key))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cbor(build: impl FnOnce(&mut Encoder<Vec<u8>>)) -> Vec<u8> {
        let mut encoder = Encoder::new(Vec::new());
        build(&mut encoder);
        encoder.into_writer()
    }

    fn as_json(body: &[u8]) -> Value {
        serde_json::from_slice(&request_as_json(body).expect("reads")).expect("JSON")
    }

    #[test]
    fn a_put_record_reads_as_its_json_form() {
        // As the Java SDK writes it: an indefinite map, a byte-string blob.
        let body = cbor(|e| {
            e.begin_map()
                .and_then(|e| e.str("StreamName"))
                .and_then(|e| e.str("orders"))
                .and_then(|e| e.str("Data"))
                .and_then(|e| e.bytes(b"hello"))
                .and_then(|e| e.str("PartitionKey"))
                .and_then(|e| e.str("k"))
                .and_then(|e| e.end())
                .map(|_| ())
                .expect("encodes");
        });
        assert_eq!(
            as_json(&body),
            json!({"StreamName": "orders", "Data": "aGVsbG8=", "PartitionKey": "k"})
        );
    }

    #[test]
    fn timestamps_are_tagged_milliseconds_on_the_wire_and_seconds_in_json() {
        let body = cbor(|e| {
            e.map(2)
                .and_then(|e| e.str("Timestamp"))
                .and_then(|e| e.tag(Tag::new(1)))
                .and_then(|e| e.i64(1_700_000_000_500))
                .and_then(|e| e.str("StreamCreationTimestamp"))
                .and_then(|e| e.tag(Tag::new(1)))
                .and_then(|e| e.f64(1_700_000_000.25))
                .map(|_| ())
                .expect("encodes");
        });
        let value = as_json(&body);
        assert_eq!(value["Timestamp"], json!(1_700_000_000.5));
        assert_eq!(value["StreamCreationTimestamp"], json!(1_700_000_000.25));

        let reply = json!({"Records": [{"ApproximateArrivalTimestamp": 1_700_000_000.123, "Data": "aGk=", "SequenceNumber": "1"}], "MillisBehindLatest": 0});
        let bytes = value_as_cbor(&reply).expect("writes");
        let mut decoder = Decoder::new(&bytes);
        assert_eq!(decoder.map().expect("map"), Some(2));
        // (Members are written in name order.)
        assert_eq!(decoder.str().expect("key"), "MillisBehindLatest");
        assert_eq!(decoder.u64().expect("a count"), 0);
        assert_eq!(decoder.str().expect("key"), "Records");
        assert_eq!(decoder.array().expect("array"), Some(1));
        assert_eq!(decoder.map().expect("record"), Some(3));
        assert_eq!(decoder.str().expect("key"), "ApproximateArrivalTimestamp");
        assert_eq!(decoder.tag().expect("tag"), Tag::new(1));
        assert_eq!(decoder.i64().expect("millis"), 1_700_000_000_123);
        assert_eq!(decoder.str().expect("key"), "Data");
        assert_eq!(decoder.bytes().expect("blob"), b"hi");
        // And back: what a reply writes, a request reads the same.
        assert_eq!(as_json(&bytes), reply);
    }

    #[test]
    fn malformed_deep_or_lying_bodies_are_refused_without_allocating() {
        // A byte string claiming 2^60 bytes in a ten-byte body.
        let lying = [0x5b, 0x10, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(request_as_json(&lying).is_err());
        // An array claiming 2^60 items, with none there.
        let empty_array = [0x9b, 0x10, 0, 0, 0, 0, 0, 0, 0];
        assert!(request_as_json(&empty_array).is_err());
        let deep = vec![0x81; 100];
        assert!(matches!(request_as_json(&deep), Err(CborError::TooDeep)));
        assert!(request_as_json(&[0xa1, 0x01, 0x02]).is_err(), "integer key");
        assert!(request_as_json(&[0xa0, 0xa0]).is_err(), "trailing bytes");
        assert!(request_as_json(&[0xff]).is_err());
    }
}
