//! SubscribeToShard's wire: `application/vnd.amazon.eventstream` messages
//! (a CRC-checked prelude, typed headers, the payload, a message CRC),
//! framed by `aws-smithy-eventstream`, the framing the AWS SDKs parse.
//!
//! Three kinds, as every SDK expects them (`:message-type` always set):
//! the `initial-response` event first, `SubscribeToShardEvent` events
//! carrying records, and modelled exceptions that end a subscription.

use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use bytes::Bytes;

use crate::cbor::Protocol;

/// The content type of a SubscribeToShard response.
pub const CONTENT_TYPE: &str = "application/vnd.amazon.eventstream";

fn string_header(name: &'static str, value: &'static str) -> Header {
    Header::new(name, HeaderValue::String(value.into()))
}

/// The content type of payloads written in `protocol` (the request's, as
/// the Java SDK decodes event payloads with its client's protocol).
fn payload_type(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Json => "application/json",
        Protocol::Cbor => crate::cbor::CONTENT_TYPE,
    }
}

/// An empty structure: `{}`, or CBOR's empty map.
fn empty_payload(protocol: Protocol) -> Bytes {
    match protocol {
        Protocol::Json => Bytes::from_static(b"{}"),
        Protocol::Cbor => Bytes::from_static(&[0xa0]),
    }
}

fn frame(message: &Message) -> Bytes {
    let mut buffer = Vec::with_capacity(message.payload().len() + 128);
    // Writing into a Vec fails only for headers or payloads past the
    // format's limits (24 MiB), which callers never build: events are cut
    // well below it.
    if let Err(error) = aws_smithy_eventstream::frame::write_message_to(message, &mut buffer) {
        tracing::error!(%error, "an event-stream message could not be framed");
        return Bytes::new();
    }
    Bytes::from(buffer)
}

/// The first message of every subscription, sent before any data is
/// ready: botocore refuses a stream without it, and the Rust SDK's `send()`
/// waits for it.
pub fn initial_response(protocol: Protocol) -> Bytes {
    frame(&Message::new_from_parts(
        vec![
            string_header(":message-type", "event"),
            string_header(":event-type", "initial-response"),
            string_header(":content-type", payload_type(protocol)),
        ],
        empty_payload(protocol),
    ))
}

/// A `SubscribeToShardEvent` whose payload is `payload`, already in
/// `protocol`.
pub fn event(payload: Vec<u8>, protocol: Protocol) -> Bytes {
    frame(&Message::new_from_parts(
        vec![
            string_header(":message-type", "event"),
            string_header(":event-type", "SubscribeToShardEvent"),
            string_header(":content-type", payload_type(protocol)),
        ],
        payload,
    ))
}

/// A modelled exception of the event stream (`ResourceInUseException`,
/// `ResourceNotFoundException`, `InternalFailureException`, ...): the
/// subscription's last message.
pub fn exception(exception_type: &'static str, message: &str, protocol: Protocol) -> Bytes {
    let payload = serde_json::json!({ "message": message });
    let payload = match protocol {
        Protocol::Json => Ok(payload.to_string().into_bytes()),
        Protocol::Cbor => crate::cbor::value_as_cbor(&payload),
    }
    .unwrap_or_default();
    frame(&Message::new_from_parts(
        vec![
            string_header(":message-type", "exception"),
            string_header(":exception-type", exception_type),
            string_header(":content-type", payload_type(protocol)),
        ],
        payload,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &Bytes) -> Message {
        aws_smithy_eventstream::frame::read_message_from(bytes.clone()).expect("a valid frame")
    }

    fn header<'a>(message: &'a Message, name: &str) -> Option<&'a str> {
        message
            .headers()
            .iter()
            .find(|h| h.name().as_str() == name)
            .and_then(|h| h.value().as_string().ok())
            .map(|s| s.as_str())
    }

    #[test]
    fn the_initial_response_is_an_event_the_sdks_recognise() {
        let bytes = initial_response(Protocol::Json);
        let message = decode(&bytes);
        assert_eq!(header(&message, ":message-type"), Some("event"));
        assert_eq!(header(&message, ":event-type"), Some("initial-response"));
        assert_eq!(message.payload().as_ref(), b"{}");
        // The total length leads the frame, and covers it exactly.
        let total = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        assert_eq!(total as usize, bytes.len());
    }

    #[test]
    fn events_and_exceptions_carry_their_types_and_payloads() {
        let message = decode(&event(br#"{"Records":[]}"#.to_vec(), Protocol::Json));
        assert_eq!(
            header(&message, ":event-type"),
            Some("SubscribeToShardEvent")
        );
        assert_eq!(header(&message, ":content-type"), Some("application/json"));
        let failure = decode(&exception(
            "ResourceInUseException",
            "taken over",
            Protocol::Json,
        ));
        assert_eq!(header(&failure, ":message-type"), Some("exception"));
        assert_eq!(
            header(&failure, ":exception-type"),
            Some("ResourceInUseException")
        );
        let body: serde_json::Value =
            serde_json::from_slice(failure.payload()).expect("JSON payload");
        assert_eq!(body["message"], "taken over");
    }

    #[test]
    fn a_corrupted_frame_is_refused_by_its_checksums() {
        let mut bytes = event(br#"{"Records":[]}"#.to_vec(), Protocol::Json).to_vec();
        let last = bytes.len() - 5;
        bytes[last] ^= 1;
        assert!(aws_smithy_eventstream::frame::read_message_from(Bytes::from(bytes)).is_err());
    }
}
