//! SubscribeToShard: validates the request, authorizes the caller on the
//! consumer, checks the consumer is ACTIVE and the shard is its stream's,
//! resolves the starting position, admits the subscription under
//! Kinesis's per-(consumer, shard) rules (`fan_out`), and answers with an
//! event stream whose records `push.rs` pushes from the shard's leader.
//!
//! Every refusal happens here, before the response starts, as an ordinary
//! JSON error every SDK's error path understands; once the stream has
//! started, a subscription ends with an exception event instead.

use std::convert::Infallible;

use futures::StreamExt as _;
use std::sync::Arc;

use freshet_proto::v1::{ClaimOutcome, ClaimSubscriptionRequest, SubscriptionKey};
use freshet_types::{ConsumerArn, SequenceNumber};
use serde::Deserialize;

use super::super::streams::normalize_shard_id;
use super::push::{Position, Push};
use super::{route_stream, shard_tail};
use crate::auth::Caller;
use crate::cbor::Protocol;
use crate::error::{KinesisError, KinesisResult, Violations};
use crate::fan_out::{event_stream, Refusal};
use crate::Frontend;
use freshet_errors::ErrorCode;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SubscribeToShardInput {
    #[serde(rename = "ConsumerARN")]
    pub consumer_arn: Option<String>,
    pub shard_id: Option<String>,
    pub starting_position: Option<StartingPositionInput>,
    pub stream_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StartingPositionInput {
    #[serde(rename = "Type")]
    pub position_type: Option<String>,
    pub sequence_number: Option<String>,
    /// Epoch seconds: boto3 sends whole seconds, other SDKs fractions.
    pub timestamp: Option<f64>,
}

const POSITION_TYPES: [&str; 5] = [
    "AT_SEQUENCE_NUMBER",
    "AFTER_SEQUENCE_NUMBER",
    "TRIM_HORIZON",
    "LATEST",
    "AT_TIMESTAMP",
];

fn check(input: &SubscribeToShardInput) -> KinesisResult<()> {
    let mut violations = Violations::default();
    violations.check_required(input.consumer_arn.as_ref(), "consumerARN");
    violations.check_length(input.consumer_arn.as_deref(), "consumerARN", 1, 2048);
    if let Some(arn) = input
        .consumer_arn
        .as_deref()
        .filter(|arn| !arn.is_empty() && arn.len() <= 2048)
    {
        if ConsumerArn::parse(arn).is_none() {
            violations.add(
                Some(arn),
                "consumerARN",
                "Member must satisfy regular expression pattern: ^(arn):aws.*:kinesis:.*:\\d{12}:.*stream\\/[a-zA-Z0-9_.-]+\\/consumer\\/[a-zA-Z0-9_.-]+:[0-9]+",
            );
        }
    }
    violations.check_required(input.shard_id.as_ref(), "shardId");
    super::super::streams::check_shard_id(input.shard_id.as_deref(), "shardId", &mut violations);
    violations.check_required(input.starting_position.as_ref(), "startingPosition");
    if let Some(position) = &input.starting_position {
        violations.check_required(position.position_type.as_ref(), "startingPosition.type");
        if let Some(kind) = position.position_type.as_deref() {
            if !POSITION_TYPES.contains(&kind) {
                violations.add(Some(kind), "startingPosition.type", "Member must satisfy enum value set: [AFTER_SEQUENCE_NUMBER, AT_SEQUENCE_NUMBER, AT_TIMESTAMP, TRIM_HORIZON, LATEST]");
            }
        }
        if let Some(sequence) = position.sequence_number.as_deref() {
            if !freshet_types::is_sequence_number_pattern(sequence) {
                violations.add(
                    Some(sequence),
                    "startingPosition.sequenceNumber",
                    "Member must satisfy regular expression pattern: 0|([1-9]\\d{0,128})",
                );
            }
        }
    }
    super::super::StreamTarget {
        stream_name: None,
        stream_arn: None,
        stream_id: input.stream_id.clone(),
    }
    .check(&mut violations);
    violations.into_result()?;
    let position = input.starting_position.as_ref();
    let kind = position
        .and_then(|p| p.position_type.as_deref())
        .unwrap_or_default();
    let sequence = position.and_then(|p| p.sequence_number.as_ref());
    let timestamp = position.and_then(|p| p.timestamp);
    let needs_sequence = matches!(kind, "AT_SEQUENCE_NUMBER" | "AFTER_SEQUENCE_NUMBER");
    if needs_sequence != sequence.is_some() {
        return Err(KinesisError::invalid_argument(if needs_sequence {
            format!("StartingPosition.SequenceNumber must be specified for type {kind}.")
        } else {
            format!("StartingPosition.SequenceNumber cannot be specified for type {kind}.")
        }));
    }
    if (kind == "AT_TIMESTAMP") != timestamp.is_some() {
        return Err(KinesisError::invalid_argument(if kind == "AT_TIMESTAMP" {
            "StartingPosition.Timestamp must be specified for type AT_TIMESTAMP.".to_owned()
        } else {
            format!("StartingPosition.Timestamp cannot be specified for type {kind}.")
        }));
    }
    if timestamp.is_some_and(|t| !t.is_finite()) {
        return Err(KinesisError::invalid_argument(
            "StartingPosition.Timestamp is not a time.",
        ));
    }
    Ok(())
}

/// The offset a sequence number of the shard whose base is `base` names,
/// for AT_SEQUENCE_NUMBER; AFTER_SEQUENCE_NUMBER names the next one. A
/// ContinuationSequenceNumber given before any record of the shard was
/// delivered is one below its first sequence number, so AFTER it is the
/// shard's first record.
fn offset_of(kind: &str, text: &str, base: u64) -> Option<u64> {
    let number = SequenceNumber::parse(text).ok().flatten()?.to_u128();
    let number = if kind == "AFTER_SEQUENCE_NUMBER" {
        number.checked_add(1)?
    } else {
        number
    };
    let sequence = SequenceNumber::from_u128(number);
    (sequence.base == base).then_some(sequence.offset)
}

/// Answers SubscribeToShard with the event stream, or refuses it.
pub async fn subscribe_to_shard(
    frontend: &Arc<Frontend>,
    caller: &Caller,
    input: SubscribeToShardInput,
    protocol: Protocol,
) -> KinesisResult<axum::body::Body> {
    check(&input)?;
    let arn_text = input.consumer_arn.as_deref().unwrap_or_default();
    let arn = ConsumerArn::parse(arn_text).ok_or_else(|| {
        KinesisError::invalid_argument(format!("Invalid ConsumerARN: {arn_text}"))
    })?;
    let arn = caller.consumer_in_region(arn)?;
    caller.authorize_consumer(&arn).await?;
    let consumer = frontend.consumers.look_up(&arn).await?;
    if consumer.status() != freshet_proto::v1::ConsumerStatus::Active {
        return Err(KinesisError::new(
            ErrorCode::ResourceInUse,
            format!("Consumer {arn} is not ACTIVE: it cannot subscribe yet (or any more)."),
        ));
    }
    let shard_id = normalize_shard_id(input.shard_id.as_deref().unwrap_or_default());
    let route = route_stream(frontend, &arn.stream).await?;
    let entry = route
        .shard(&shard_id)
        .filter(|e| e.key.as_ref().map(|k| k.stream_uid) == Some(consumer.stream_uid))
        .cloned()
        .ok_or_else(|| {
            KinesisError::resource_not_found(format!(
                "Shard {shard_id} in stream {} under account {} does not exist",
                arn.stream.stream_name, arn.stream.account_id
            ))
        })?;
    let position_input = input.starting_position.unwrap_or_default();
    let kind = position_input.position_type.as_deref().unwrap_or_default();
    let position = match kind {
        "TRIM_HORIZON" => Position::AtOffset(0),
        "AT_TIMESTAMP" => Position::AtTimestampMs(
            (position_input.timestamp.unwrap_or_default() * 1000.0).round() as i64,
        ),
        // A closed shard's tip is its end: its leader need not answer.
        "LATEST" if entry.state() == freshet_proto::v1::ShardState::Closed => {
            Position::AtOffset(entry.ending_offset)
        }
        "LATEST" => Position::AtOffset(shard_tail(frontend, &entry).await?),
        _ => {
            let text = position_input
                .sequence_number
                .as_deref()
                .unwrap_or_default();
            let offset = offset_of(kind, text, entry.sequence_base).ok_or_else(|| {
                KinesisError::invalid_argument(format!(
                    "StartingPosition.SequenceNumber {text} used in SubscribeToShard on shard {shard_id} in stream {} under account {} is invalid because it did not come from this shard.",
                    arn.stream.stream_name, arn.stream.account_id
                ))
            })?;
            Position::AtOffset(offset)
        }
    };
    let refused = |refusal| {
        match refusal {
            Refusal::InUse => KinesisError::new(
                ErrorCode::ResourceInUse,
                format!(
                    "Another active subscription exists for consumer {arn} on shard {shard_id}; a new one may take it over once it is 5 seconds old."
                ),
            ),
            Refusal::TooFrequent => KinesisError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "Consumer {arn} may subscribe to shard {shard_id} once per second."
                ),
            ),
            Refusal::TooMany => KinesisError::new(
                ErrorCode::LimitExceeded,
                "This endpoint holds as many subscriptions as it may; try again later.",
            ),
    }
    };
    // This frontend's rules first, then the control plane's claim across
    // every frontend; only then does a live subscription it replaces end.
    let ticket = frontend
        .subscriptions
        .check(&arn, &shard_id, tokio::time::Instant::now())
        .map_err(refused)?;
    claim_across_frontends(frontend, &arn, &shard_id, &ticket).await?;
    let held = frontend
        .subscriptions
        .admit(ticket, tokio::time::Instant::now())
        .map_err(refused)?;
    // The initial response goes out first, whatever follows.
    let (out, events) = tokio::sync::mpsc::channel(1);
    let _ = out.try_send(event_stream::initial_response(protocol));
    // The event that says why a subscription ended follows the events
    // already made, without waiting for room among them: a subscriber that
    // stopped reading never keeps an ended subscription's place.
    let (last_out, last) = tokio::sync::oneshot::channel();
    let push = Push::new(
        frontend.clone(),
        arn,
        consumer.stream_uid,
        shard_id,
        position,
        (out, last_out, protocol),
    );
    tokio::spawn(push.run(held));
    let events = tokio_stream::wrappers::ReceiverStream::new(events)
        .chain(futures::stream::once(last).filter_map(|last| async move { last.ok() }));
    Ok(axum::body::Body::from_stream(
        events.map(Ok::<_, Infallible>),
    ))
}

/// Claims the (consumer, shard) at the control plane, so the takeover
/// rule holds across frontends. A control plane that cannot be asked does
/// not stop the subscription (this frontend's own rule still holds).
async fn claim_across_frontends(
    frontend: &Frontend,
    arn: &ConsumerArn,
    shard_id: &str,
    ticket: &crate::fan_out::Ticket,
) -> KinesisResult<()> {
    let request = freshet_server::request_with_deadline(
        ClaimSubscriptionRequest {
            key: Some(SubscriptionKey {
                consumer_arn: arn.to_string(),
                shard_id: shard_id.to_owned(),
            }),
            holder: ticket.progress.holder.clone(),
            ended_holder: ticket.ended_holder.clone().unwrap_or_default(),
        },
        // Short: a control plane that cannot answer does not stop it.
        std::time::Duration::from_secs(1),
    );
    let answer = frontend
        .control_plane
        .clone()
        .claim_subscription(request)
        .await;
    let outcome = match answer {
        Ok(answer) => {
            ticket.progress.claimed();
            answer.into_inner().outcome()
        }
        Err(status) => {
            tracing::warn!(
                message = status.message(),
                "subscription not claimed at the control plane"
            );
            return Ok(());
        }
    };
    match outcome {
        ClaimOutcome::InUse => Err(KinesisError::new(
            ErrorCode::ResourceInUse,
            format!(
                "Another active subscription exists for consumer {arn} on shard {shard_id}; a new one may take it over once it is 5 seconds old."
            ),
        )),
        ClaimOutcome::TooFrequent => Err(KinesisError::new(
            ErrorCode::LimitExceeded,
            format!("Consumer {arn} may subscribe to shard {shard_id} once per second."),
        )),
        ClaimOutcome::Claimed | ClaimOutcome::Unspecified => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_a_continuation_is_the_first_record_not_delivered() {
        let base = 7;
        let at = |offset| SequenceNumber { base, offset }.to_string();
        assert_eq!(offset_of("AT_SEQUENCE_NUMBER", &at(5), base), Some(5));
        assert_eq!(offset_of("AFTER_SEQUENCE_NUMBER", &at(5), base), Some(6));
        // The continuation sent before any record: one below the first.
        let before_first = (SequenceNumber { base, offset: 0 }.to_u128() - 1).to_string();
        assert_eq!(
            offset_of("AFTER_SEQUENCE_NUMBER", &before_first, base),
            Some(0)
        );
        // Another shard's sequence number names nothing here.
        assert_eq!(offset_of("AT_SEQUENCE_NUMBER", &before_first, base), None);
        let other = SequenceNumber { base: 8, offset: 0 }.to_string();
        assert_eq!(offset_of("AT_SEQUENCE_NUMBER", &other, base), None);
    }
}
