//! What ListShards's ShardFilter selects, by when each shard opened and
//! closed (`ShardInfo.opened_at_ms`, `closed_at_ms`) and the stream's trim
//! horizon — the API reference's table:
//!
//! | type | shards listed |
//! |---|---|
//! | FROM_TRIM_HORIZON (default), AFTER_SHARD_ID | every shard not expired (open, or closed at or after the trim horizon) |
//! | AT_TRIM_HORIZON | those open at the trim horizon |
//! | AT_LATEST | those open now |
//! | AT_TIMESTAMP | those open at the time: opened at or before it, closed at or after it or still open |
//! | FROM_TIMESTAMP | those closed at or after the time (raised to the trim horizon), and every open one |
//!
//! A shard closed before the trim horizon has expired and is never listed.
//! The trim horizon is the oldest arrival time still served, and no earlier
//! than the stream's creation (a young stream's trim horizon is its start).

use freshet_proto::v1::ShardInfo;

/// A ShardFilter, checked, with its timestamp in ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Selection {
    FromTrimHorizon,
    AtTrimHorizon,
    AtLatest,
    AtTimestamp(i64),
    FromTimestamp(i64),
}

impl Selection {
    /// The selection a filter type names (AFTER_SHARD_ID selects as the
    /// default does, from the shard after the one it names).
    pub(crate) fn of(filter_type: Option<&str>, timestamp_ms: Option<i64>) -> Selection {
        let at = timestamp_ms.unwrap_or(0);
        match filter_type {
            Some("AT_TRIM_HORIZON") => Selection::AtTrimHorizon,
            Some("AT_LATEST") => Selection::AtLatest,
            Some("AT_TIMESTAMP") => Selection::AtTimestamp(at),
            Some("FROM_TIMESTAMP") => Selection::FromTimestamp(at),
            _ => Selection::FromTrimHorizon,
        }
    }

    /// Whether `shard` is listed, with the stream's trim horizon at
    /// `trim_horizon_ms`.
    pub(crate) fn selects(self, shard: &ShardInfo, trim_horizon_ms: i64) -> bool {
        let closed_at = (shard.closed_at_ms != 0).then_some(shard.closed_at_ms);
        let open_at =
            |time: i64| shard.opened_at_ms <= time && closed_at.is_none_or(|closed| closed >= time);
        let expired = closed_at.is_some_and(|closed| closed < trim_horizon_ms);
        if expired {
            return false;
        }
        match self {
            Selection::FromTrimHorizon => true,
            Selection::AtTrimHorizon => open_at(trim_horizon_ms),
            Selection::AtLatest => closed_at.is_none(),
            Selection::AtTimestamp(time) => open_at(time),
            Selection::FromTimestamp(time) => {
                let from = time.max(trim_horizon_ms);
                closed_at.is_none_or(|closed| closed >= from)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str, opened: i64, closed: i64) -> ShardInfo {
        ShardInfo {
            shard_id: id.to_owned(),
            opened_at_ms: opened,
            closed_at_ms: closed,
            ..ShardInfo::default()
        }
    }

    /// A stream created at 100 with shards 0 and 1; 0 split at 200 into 2
    /// and 3; 3 and 1 merged at 300 into 4.
    fn history() -> Vec<ShardInfo> {
        vec![
            shard("0", 100, 200),
            shard("1", 100, 300),
            shard("2", 200, 0),
            shard("3", 200, 300),
            shard("4", 300, 0),
        ]
    }

    fn listed(selection: Selection, trim_horizon_ms: i64) -> Vec<String> {
        history()
            .iter()
            .filter(|s| selection.selects(s, trim_horizon_ms))
            .map(|s| s.shard_id.clone())
            .collect()
    }

    #[test]
    fn each_filter_type_selects_what_the_api_reference_says() {
        // The trim horizon at the stream's start: nothing expired.
        let table: [(Selection, &[&str]); 9] = [
            (Selection::FromTrimHorizon, &["0", "1", "2", "3", "4"]),
            (Selection::AtTrimHorizon, &["0", "1"]),
            (Selection::AtLatest, &["2", "4"]),
            (Selection::AtTimestamp(150), &["0", "1"]),
            (Selection::AtTimestamp(250), &["1", "2", "3"]),
            (Selection::AtTimestamp(350), &["2", "4"]),
            (Selection::FromTimestamp(250), &["1", "2", "3", "4"]),
            (Selection::FromTimestamp(350), &["2", "4"]),
            (Selection::FromTimestamp(0), &["0", "1", "2", "3", "4"]),
        ];
        for (selection, expected) in table {
            assert_eq!(listed(selection, 100), expected, "{selection:?}");
        }
    }

    #[test]
    fn shards_closed_before_the_trim_horizon_have_expired() {
        // The trim horizon between the split and the merge: shard 0 expired.
        assert_eq!(
            listed(Selection::FromTrimHorizon, 250),
            ["1", "2", "3", "4"]
        );
        assert_eq!(listed(Selection::AtTrimHorizon, 250), ["1", "2", "3"]);
        assert_eq!(
            listed(Selection::FromTimestamp(0), 250),
            ["1", "2", "3", "4"]
        );
        assert_eq!(listed(Selection::AtTimestamp(150), 250), ["1"]);
        // After the merge: only the open shards are left.
        assert_eq!(listed(Selection::FromTrimHorizon, 301), ["2", "4"]);
        assert_eq!(listed(Selection::AtTrimHorizon, 301), ["2", "4"]);
    }
}
