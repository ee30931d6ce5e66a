//! A CBOR 1.1 client built from the botocore model's shapes, as the Java
//! SDK's is from its own copy of the model: each member is written and
//! read by its shape's type (blobs as byte strings, timestamps as tag 1
//! with epoch milliseconds, structures as indefinite-length maps, as the
//! Java SDK writes them). It shares no code with the frontend's CBOR
//! reader, so the two check each other.

use std::process::Command;

use anyhow::{bail, Context as _};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use minicbor::data::{Tag, Type};
use minicbor::{Decoder, Encoder};
use serde_json::{Map, Value};

/// The Kinesis API model botocore ships.
pub struct Model {
    model: Value,
}

fn encode_error(error: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("encode: {error}")
}

impl Model {
    /// The model of the botocore installed for `python3`.
    pub fn from_botocore() -> anyhow::Result<Model> {
        let script = "import botocore.loaders, json, sys; \
                      json.dump(botocore.loaders.Loader().load_service_model('kinesis', 'service-2'), sys.stdout)";
        let output = Command::new("python3")
            .args(["-c", script])
            .output()
            .context("run python3")?;
        anyhow::ensure!(
            output.status.success(),
            "botocore's Kinesis model could not be loaded (pip install boto3): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(Model {
            model: serde_json::from_slice(&output.stdout).context("parse the model")?,
        })
    }

    /// Every operation's name.
    pub fn operations(&self) -> Vec<String> {
        self.model["operations"]
            .as_object()
            .map(|ops| ops.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn shape(&self, name: &str) -> &Value {
        &self.model["shapes"][name]
    }

    /// The input (or output) shape of `operation`.
    pub fn io_shape(&self, operation: &str, io: &str) -> Option<String> {
        self.model["operations"][operation][io]["shape"]
            .as_str()
            .map(str::to_owned)
    }

    /// Every (structure, member, type) of the model whose type is a blob
    /// or a timestamp.
    pub fn typed_members(&self) -> Vec<(String, String, String)> {
        let mut found = Vec::new();
        let Some(shapes) = self.model["shapes"].as_object() else {
            return found;
        };
        for (name, shape) in shapes {
            let Some(members) = shape["members"].as_object() else {
                continue;
            };
            for (member, target) in members {
                let kind = self.shape(target["shape"].as_str().unwrap_or_default())["type"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                found.push((name.clone(), member.clone(), kind));
            }
        }
        found
    }

    /// `value` (the JSON form of a `shape`) as CBOR.
    pub fn encode(&self, shape: &str, value: &Value) -> anyhow::Result<Vec<u8>> {
        let mut encoder = Encoder::new(Vec::new());
        self.write(shape, value, &mut encoder)?;
        Ok(encoder.into_writer())
    }

    fn write(&self, shape: &str, value: &Value, e: &mut Encoder<Vec<u8>>) -> anyhow::Result<()> {
        let definition = self.shape(shape);
        match (definition["type"].as_str().unwrap_or_default(), value) {
            ("structure", Value::Object(map)) => {
                e.begin_map().map_err(encode_error)?;
                for (member, item) in map {
                    let target = definition["members"][member]["shape"]
                        .as_str()
                        .with_context(|| format!("{shape} has no member {member}"))?;
                    e.str(member).map_err(encode_error)?;
                    self.write(target, item, e)?;
                }
                e.end().map_err(encode_error)?;
            }
            ("list", Value::Array(items)) => {
                let member = definition["member"]["shape"].as_str().unwrap_or_default();
                e.array(items.len() as u64).map_err(encode_error)?;
                for item in items {
                    self.write(member, item, e)?;
                }
            }
            ("map", Value::Object(map)) => {
                let target = definition["value"]["shape"].as_str().unwrap_or_default();
                e.map(map.len() as u64).map_err(encode_error)?;
                for (key, item) in map {
                    e.str(key).map_err(encode_error)?;
                    self.write(target, item, e)?;
                }
            }
            ("blob", Value::String(base64)) => {
                e.bytes(&STANDARD.decode(base64)?).map_err(encode_error)?;
            }
            ("timestamp", Value::Number(seconds)) => {
                let ms = (seconds.as_f64().unwrap_or_default() * 1000.0).round() as i64;
                e.tag(Tag::new(1))
                    .map_err(encode_error)?
                    .i64(ms)
                    .map_err(encode_error)?;
            }
            ("string", Value::String(text)) => {
                e.str(text).map_err(encode_error)?;
            }
            ("integer" | "long", Value::Number(n)) => {
                e.i64(n.as_i64().context("an integer")?)
                    .map_err(encode_error)?;
            }
            ("boolean", Value::Bool(flag)) => {
                e.bool(*flag).map_err(encode_error)?;
            }
            (kind, value) => bail!("cannot write {value} as {shape} ({kind})"),
        }
        Ok(())
    }

    /// A CBOR reply of `shape`, in its JSON form (blobs as base64,
    /// timestamps as epoch seconds). Timestamps must be tagged.
    pub fn decode(&self, shape: &str, bytes: &[u8]) -> anyhow::Result<Value> {
        let mut decoder = Decoder::new(bytes);
        let value = self.read(Some(shape), &mut decoder)?;
        anyhow::ensure!(decoder.position() == bytes.len(), "trailing bytes");
        Ok(value)
    }

    fn read(&self, shape: Option<&str>, d: &mut Decoder<'_>) -> anyhow::Result<Value> {
        let kind = shape
            .map(|s| self.shape(s)["type"].as_str().unwrap_or_default())
            .unwrap_or_default();
        if kind == "timestamp" {
            anyhow::ensure!(d.tag()? == Tag::new(1), "an untagged timestamp");
            let ms = d.i64().context("timestamps are integer milliseconds")?;
            return Ok(serde_json::json!(ms as f64 / 1000.0));
        }
        Ok(match d.datatype()? {
            Type::Map | Type::MapIndef => {
                let length = d.map()?;
                let mut map = Map::new();
                let mut read = 0;
                while length.is_none_or(|n| read < n) {
                    if length.is_none() && d.datatype()? == Type::Break {
                        d.skip()?;
                        break;
                    }
                    let key = d.str()?.to_owned();
                    let member = match (kind, shape) {
                        ("structure", Some(s)) => self.shape(s)["members"][&key]["shape"]
                            .as_str()
                            .map(str::to_owned),
                        ("map", Some(s)) => {
                            self.shape(s)["value"]["shape"].as_str().map(str::to_owned)
                        }
                        _ => None,
                    };
                    map.insert(key, self.read(member.as_deref(), d)?);
                    read += 1;
                }
                Value::Object(map)
            }
            Type::Array | Type::ArrayIndef => {
                let length = d.array()?;
                let member = shape
                    .and_then(|s| self.shape(s)["member"]["shape"].as_str())
                    .map(str::to_owned);
                let mut items = Vec::new();
                let mut read = 0;
                while length.is_none_or(|n| read < n) {
                    if length.is_none() && d.datatype()? == Type::Break {
                        d.skip()?;
                        break;
                    }
                    items.push(self.read(member.as_deref(), d)?);
                    read += 1;
                }
                Value::Array(items)
            }
            Type::Bytes => {
                anyhow::ensure!(kind == "blob" || shape.is_none(), "bytes for a {kind}");
                Value::String(STANDARD.encode(d.bytes()?))
            }
            Type::String => Value::String(d.str()?.to_owned()),
            Type::Bool => Value::Bool(d.bool()?),
            Type::Null => {
                d.null()?;
                Value::Null
            }
            Type::U8 | Type::U16 | Type::U32 | Type::U64 => Value::from(d.u64()?),
            Type::I8 | Type::I16 | Type::I32 | Type::I64 => Value::from(d.i64()?),
            Type::F16 | Type::F32 | Type::F64 => serde_json::json!(d.f64()?),
            other => bail!("unexpected CBOR {other}"),
        })
    }
}

/// Whether two JSON forms of a reply say the same: equal, with numbers
/// equal to a microsecond (timestamps travel as milliseconds in CBOR).
pub fn same_reply(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            (x.as_f64().unwrap_or(f64::NAN) - y.as_f64().unwrap_or(f64::NAN)).abs() < 1e-6
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_reply(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(key, value)| y.get(key).is_some_and(|other| same_reply(value, other)))
        }
        _ => a == b,
    }
}
