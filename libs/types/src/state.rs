//! The states Freshet keeps as text in Postgres and shows to Kinesis
//! clients, as enums: converted once where they enter (a Postgres row, a
//! proto message, a request) and compared as values everywhere else.
//!
//! Each enum's text form is exactly Kinesis's (and the Postgres column's):
//! `as_str` writes it and `FromStr` reads it, refusing anything else with
//! [`UnknownState`].

use std::fmt;
use std::str::FromStr;

/// A text that names no state of the expected kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {text:?}")]
pub struct UnknownState {
    /// Which kind of state was expected (`stream status`, ...).
    pub kind: &'static str,
    pub text: String,
}

/// Declares an enum of states with its one text form per variant.
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        $name:ident ($kind:literal) {
            $( $(#[$variant_meta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$variant_meta])* $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The text form Kinesis and Postgres use.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }
        }

        impl FromStr for $name {
            type Err = UnknownState;

            fn from_str(text: &str) -> Result<$name, UnknownState> {
                match text {
                    $( $text => Ok($name::$variant), )+
                    _ => Err(UnknownState { kind: $kind, text: text.to_owned() }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum! {
    /// Where a stream is in its life (Kinesis's `StreamStatus`).
    StreamStatus ("stream status") {
        /// Its shards are being placed; not usable yet.
        Creating = "CREATING",
        /// Usable, and open to a resharding or mode change.
        Active = "ACTIVE",
        /// A split, merge or shard-count change is under way; reads and
        /// writes go on.
        Updating = "UPDATING",
        /// Being removed; nothing new starts on it.
        Deleting = "DELETING",
    }
}

text_enum! {
    /// Where an enhanced fan-out consumer is in its life (Kinesis's
    /// `ConsumerStatus`). Only an ACTIVE consumer may subscribe.
    ConsumerStatus ("consumer status") {
        /// Registered; ACTIVE shortly (the control plane's consumer loop).
        Creating = "CREATING",
        /// May call SubscribeToShard.
        Active = "ACTIVE",
        /// Deregistered; its subscriptions end and it is removed shortly.
        Deleting = "DELETING",
    }
}

text_enum! {
    /// How a stream's capacity is managed (Kinesis's `StreamMode`).
    StreamMode ("stream mode") {
        /// The owner sets the shard count.
        Provisioned = "PROVISIONED",
        /// The scaler splits and merges shards as load changes.
        OnDemand = "ON_DEMAND",
    }
}

text_enum! {
    /// A shard's state as Postgres keeps it. The shard map's
    /// `ShardState::Deleted` tombstone is not one: a deleted stream's shard
    /// rows are gone.
    ShardState ("shard state") {
        /// Takes writes.
        Open = "OPEN",
        /// Being sealed (a split, merge or move between workers): readable,
        /// not writable, its end not yet fixed.
        Closing = "CLOSING",
        /// Sealed for good: holds exactly the offsets below its ending offset.
        Closed = "CLOSED",
    }
}

text_enum! {
    /// An account's minimum-throughput billing commitment, as of now
    /// (Kinesis's `MinimumThroughputBillingCommitmentOutputStatus`).
    CommitmentStatus ("commitment status") {
        Enabled = "ENABLED",
        /// Disabled by the owner before its 24-hour minimum ran out: it
        /// stays on until then.
        EnabledUntilEarliestAllowedEnd = "ENABLED_UNTIL_EARLIEST_ALLOWED_END",
        Disabled = "DISABLED",
    }
}

text_enum! {
    /// Whether an access key signs requests (IAM's `StatusType`).
    AccessKeyStatus ("access key status") {
        Active = "Active",
        /// Kept, but every request it signs is refused.
        Inactive = "Inactive",
    }
}

impl CommitmentStatus {
    /// Whether the commitment is in force now (warm throughput needs it).
    pub fn is_in_force(self) -> bool {
        self != CommitmentStatus::Disabled
    }
}

impl ShardState {
    /// Whether the shard counts as open in a stream whose status is
    /// `stream`: OPEN, or CLOSING in an ACTIVE stream — a move to another
    /// worker under way (worker balancing), after which it is OPEN again;
    /// resharding closes shards only while the stream is UPDATING.
    pub fn counts_as_open(self, stream: StreamStatus) -> bool {
        match self {
            ShardState::Open => true,
            ShardState::Closing => stream == StreamStatus::Active,
            ShardState::Closed => false,
        }
    }

    /// The one rule for a shard's state changes, checked by membership
    /// before it publishes a change and by the metastore's guarded updates:
    ///
    /// - OPEN → CLOSING: a seal starts (split, merge or move).
    /// - CLOSING → CLOSED: a split or merge fixed the shard's end.
    /// - CLOSING → OPEN: a move's next segment opens, or an abandoned split
    ///   or merge is undone.
    ///
    /// A CLOSED shard never changes again, and no state skips CLOSING.
    pub fn may_become(self, next: ShardState) -> bool {
        matches!(
            (self, next),
            (ShardState::Open, ShardState::Closing)
                | (ShardState::Closing, ShardState::Closed)
                | (ShardState::Closing, ShardState::Open)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_reads_back_from_its_text() {
        for status in StreamStatus::ALL {
            assert_eq!(status.as_str().parse::<StreamStatus>(), Ok(*status));
        }
        for mode in StreamMode::ALL {
            assert_eq!(mode.as_str().parse::<StreamMode>(), Ok(*mode));
        }
        for state in ShardState::ALL {
            assert_eq!(state.as_str().parse::<ShardState>(), Ok(*state));
        }
        for status in CommitmentStatus::ALL {
            assert_eq!(status.as_str().parse::<CommitmentStatus>(), Ok(*status));
        }
    }

    #[test]
    fn unknown_text_is_an_error_naming_its_kind() {
        let error = "active".parse::<StreamStatus>().unwrap_err();
        assert_eq!(error.to_string(), "unknown stream status \"active\"");
        assert!("".parse::<ShardState>().is_err());
        assert!("DELETED".parse::<ShardState>().is_err());
    }

    #[test]
    fn shard_state_transitions() {
        use ShardState::*;
        // (from, to, allowed)
        let table = [
            (Open, Open, false),
            (Open, Closing, true),
            (Open, Closed, false),
            (Closing, Open, true),
            (Closing, Closing, false),
            (Closing, Closed, true),
            (Closed, Open, false),
            (Closed, Closing, false),
            (Closed, Closed, false),
        ];
        for (from, to, allowed) in table {
            assert_eq!(from.may_become(to), allowed, "{from} -> {to}");
        }
    }

    #[test]
    fn a_closing_shard_counts_as_open_only_while_its_stream_is_active() {
        use StreamStatus::*;
        for stream in StreamStatus::ALL {
            assert!(ShardState::Open.counts_as_open(*stream));
            assert!(!ShardState::Closed.counts_as_open(*stream));
        }
        assert!(ShardState::Closing.counts_as_open(Active));
        assert!(!ShardState::Closing.counts_as_open(Updating));
        assert!(!ShardState::Closing.counts_as_open(Deleting));
    }

    #[test]
    fn only_a_disabled_commitment_is_out_of_force() {
        assert!(CommitmentStatus::Enabled.is_in_force());
        assert!(CommitmentStatus::EnabledUntilEarliestAllowedEnd.is_in_force());
        assert!(!CommitmentStatus::Disabled.is_in_force());
    }
}
