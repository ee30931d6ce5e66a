//! Conversions between the wire enums and Freshet's domain states
//! (`freshet-types`): made once, here, at the edge. A wire value with no
//! domain meaning (UNSPECIFIED, or DELETED where a live shard is meant) is
//! an [`UnknownState`] error.

use freshet_types::{
    AccessKeyStatus, CommitmentStatus, ConsumerStatus, ShardState, StreamMode, StreamStatus,
    UnknownState,
};

use crate::v1;

fn unknown(kind: &'static str, value: impl std::fmt::Debug) -> UnknownState {
    UnknownState {
        kind,
        text: format!("{value:?}"),
    }
}

impl From<ShardState> for v1::ShardState {
    fn from(state: ShardState) -> v1::ShardState {
        match state {
            ShardState::Open => v1::ShardState::Open,
            ShardState::Closing => v1::ShardState::Closing,
            ShardState::Closed => v1::ShardState::Closed,
        }
    }
}

impl TryFrom<v1::ShardState> for ShardState {
    type Error = UnknownState;

    /// A live shard's state; a tombstone (DELETED) is not one.
    fn try_from(state: v1::ShardState) -> Result<ShardState, UnknownState> {
        match state {
            v1::ShardState::Open => Ok(ShardState::Open),
            v1::ShardState::Closing => Ok(ShardState::Closing),
            v1::ShardState::Closed => Ok(ShardState::Closed),
            other @ (v1::ShardState::Unspecified | v1::ShardState::Deleted) => {
                Err(unknown("shard state", other))
            }
        }
    }
}

impl From<StreamMode> for v1::StreamMode {
    fn from(mode: StreamMode) -> v1::StreamMode {
        match mode {
            StreamMode::Provisioned => v1::StreamMode::Provisioned,
            StreamMode::OnDemand => v1::StreamMode::OnDemand,
        }
    }
}

impl TryFrom<v1::StreamMode> for StreamMode {
    type Error = UnknownState;

    fn try_from(mode: v1::StreamMode) -> Result<StreamMode, UnknownState> {
        match mode {
            v1::StreamMode::Provisioned => Ok(StreamMode::Provisioned),
            v1::StreamMode::OnDemand => Ok(StreamMode::OnDemand),
            v1::StreamMode::Unspecified => Err(unknown("stream mode", mode)),
        }
    }
}

impl From<ConsumerStatus> for v1::ConsumerStatus {
    fn from(status: ConsumerStatus) -> v1::ConsumerStatus {
        match status {
            ConsumerStatus::Creating => v1::ConsumerStatus::Creating,
            ConsumerStatus::Active => v1::ConsumerStatus::Active,
            ConsumerStatus::Deleting => v1::ConsumerStatus::Deleting,
        }
    }
}

impl TryFrom<v1::ConsumerStatus> for ConsumerStatus {
    type Error = UnknownState;

    fn try_from(status: v1::ConsumerStatus) -> Result<ConsumerStatus, UnknownState> {
        match status {
            v1::ConsumerStatus::Creating => Ok(ConsumerStatus::Creating),
            v1::ConsumerStatus::Active => Ok(ConsumerStatus::Active),
            v1::ConsumerStatus::Deleting => Ok(ConsumerStatus::Deleting),
            v1::ConsumerStatus::Unspecified => Err(unknown("consumer status", status)),
        }
    }
}

impl From<StreamStatus> for v1::StreamStatus {
    fn from(status: StreamStatus) -> v1::StreamStatus {
        match status {
            StreamStatus::Creating => v1::StreamStatus::Creating,
            StreamStatus::Active => v1::StreamStatus::Active,
            StreamStatus::Updating => v1::StreamStatus::Updating,
            StreamStatus::Deleting => v1::StreamStatus::Deleting,
        }
    }
}

impl TryFrom<v1::StreamStatus> for StreamStatus {
    type Error = UnknownState;

    fn try_from(status: v1::StreamStatus) -> Result<StreamStatus, UnknownState> {
        match status {
            v1::StreamStatus::Creating => Ok(StreamStatus::Creating),
            v1::StreamStatus::Active => Ok(StreamStatus::Active),
            v1::StreamStatus::Updating => Ok(StreamStatus::Updating),
            v1::StreamStatus::Deleting => Ok(StreamStatus::Deleting),
            v1::StreamStatus::Unspecified => Err(unknown("stream status", status)),
        }
    }
}

impl From<CommitmentStatus> for v1::CommitmentStatus {
    fn from(status: CommitmentStatus) -> v1::CommitmentStatus {
        match status {
            CommitmentStatus::Enabled => v1::CommitmentStatus::Enabled,
            CommitmentStatus::EnabledUntilEarliestAllowedEnd => {
                v1::CommitmentStatus::EnabledUntilEarliestAllowedEnd
            }
            CommitmentStatus::Disabled => v1::CommitmentStatus::Disabled,
        }
    }
}

impl TryFrom<v1::CommitmentStatus> for CommitmentStatus {
    type Error = UnknownState;

    fn try_from(status: v1::CommitmentStatus) -> Result<CommitmentStatus, UnknownState> {
        match status {
            v1::CommitmentStatus::Enabled => Ok(CommitmentStatus::Enabled),
            v1::CommitmentStatus::EnabledUntilEarliestAllowedEnd => {
                Ok(CommitmentStatus::EnabledUntilEarliestAllowedEnd)
            }
            v1::CommitmentStatus::Disabled => Ok(CommitmentStatus::Disabled),
            v1::CommitmentStatus::Unspecified => Err(unknown("commitment status", status)),
        }
    }
}

impl From<AccessKeyStatus> for v1::AccessKeyState {
    fn from(status: AccessKeyStatus) -> v1::AccessKeyState {
        match status {
            AccessKeyStatus::Active => v1::AccessKeyState::Active,
            AccessKeyStatus::Inactive => v1::AccessKeyState::Inactive,
        }
    }
}

impl TryFrom<v1::AccessKeyState> for AccessKeyStatus {
    type Error = UnknownState;

    fn try_from(state: v1::AccessKeyState) -> Result<AccessKeyStatus, UnknownState> {
        match state {
            v1::AccessKeyState::Active => Ok(AccessKeyStatus::Active),
            v1::AccessKeyState::Inactive => Ok(AccessKeyStatus::Inactive),
            v1::AccessKeyState::Unspecified => Err(unknown("access key status", state)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_domain_state_survives_the_wire() {
        for &state in ShardState::ALL {
            assert_eq!(ShardState::try_from(v1::ShardState::from(state)), Ok(state));
        }
        for &mode in StreamMode::ALL {
            assert_eq!(StreamMode::try_from(v1::StreamMode::from(mode)), Ok(mode));
        }
        for &status in StreamStatus::ALL {
            assert_eq!(
                StreamStatus::try_from(v1::StreamStatus::from(status)),
                Ok(status)
            );
        }
        for &status in CommitmentStatus::ALL {
            let wire = v1::CommitmentStatus::from(status);
            assert_eq!(CommitmentStatus::try_from(wire), Ok(status));
        }
        for &status in AccessKeyStatus::ALL {
            let wire = v1::AccessKeyState::from(status);
            assert_eq!(AccessKeyStatus::try_from(wire), Ok(status));
        }
    }

    #[test]
    fn wire_values_without_a_domain_meaning_are_errors() {
        assert!(ShardState::try_from(v1::ShardState::Deleted).is_err());
        assert!(ShardState::try_from(v1::ShardState::Unspecified).is_err());
        assert!(StreamMode::try_from(v1::StreamMode::Unspecified).is_err());
        assert!(StreamStatus::try_from(v1::StreamStatus::Unspecified).is_err());
        assert!(CommitmentStatus::try_from(v1::CommitmentStatus::Unspecified).is_err());
        assert!(AccessKeyStatus::try_from(v1::AccessKeyState::Unspecified).is_err());
    }
}
