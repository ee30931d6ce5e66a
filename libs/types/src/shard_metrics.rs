//! CloudWatch's shard-level metrics, which enhanced monitoring switches on
//! per stream (EnableEnhancedMonitoring, DisableEnhancedMonitoring), and the
//! set of them a stream has on, kept as a bitmask in Postgres and in its
//! shard-map entries.

/// One shard-level metric, by its CloudWatch name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ShardLevelMetric {
    IncomingBytes,
    IncomingRecords,
    OutgoingBytes,
    OutgoingRecords,
    WriteProvisionedThroughputExceeded,
    ReadProvisionedThroughputExceeded,
    IteratorAgeMilliseconds,
}

impl ShardLevelMetric {
    /// Every metric, in the order Kinesis lists them.
    pub const EVERY: [ShardLevelMetric; 7] = [
        ShardLevelMetric::IncomingBytes,
        ShardLevelMetric::IncomingRecords,
        ShardLevelMetric::OutgoingBytes,
        ShardLevelMetric::OutgoingRecords,
        ShardLevelMetric::WriteProvisionedThroughputExceeded,
        ShardLevelMetric::ReadProvisionedThroughputExceeded,
        ShardLevelMetric::IteratorAgeMilliseconds,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ShardLevelMetric::IncomingBytes => "IncomingBytes",
            ShardLevelMetric::IncomingRecords => "IncomingRecords",
            ShardLevelMetric::OutgoingBytes => "OutgoingBytes",
            ShardLevelMetric::OutgoingRecords => "OutgoingRecords",
            ShardLevelMetric::WriteProvisionedThroughputExceeded => {
                "WriteProvisionedThroughputExceeded"
            }
            ShardLevelMetric::ReadProvisionedThroughputExceeded => {
                "ReadProvisionedThroughputExceeded"
            }
            ShardLevelMetric::IteratorAgeMilliseconds => "IteratorAgeMilliseconds",
        }
    }

    /// The metric called `name` (not `ALL`, which names a set).
    pub fn parse(name: &str) -> Option<ShardLevelMetric> {
        Self::EVERY.into_iter().find(|metric| metric.name() == name)
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// A set of shard-level metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ShardLevelMetrics(u32);

impl ShardLevelMetrics {
    pub const NONE: ShardLevelMetrics = ShardLevelMetrics(0);

    pub fn all() -> ShardLevelMetrics {
        Self::EVERY_BITS
    }

    const EVERY_BITS: ShardLevelMetrics = ShardLevelMetrics((1 << 7) - 1);

    /// The set a bitmask holds (bits of no metric are dropped).
    pub fn from_bits(bits: u32) -> ShardLevelMetrics {
        ShardLevelMetrics(bits & Self::EVERY_BITS.0)
    }

    pub fn bits(self) -> u32 {
        self.0
    }

    /// The metrics `names` name, `ALL` for every one; `Err` with the first
    /// name that is neither.
    pub fn parse<'a>(
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<ShardLevelMetrics, &'a str> {
        let mut set = ShardLevelMetrics::NONE;
        for name in names {
            if name == "ALL" {
                set = Self::all();
            } else {
                let metric = ShardLevelMetric::parse(name).ok_or(name)?;
                set.0 |= metric.bit();
            }
        }
        Ok(set)
    }

    pub fn contains(self, metric: ShardLevelMetric) -> bool {
        self.0 & metric.bit() != 0
    }

    pub fn union(self, other: ShardLevelMetrics) -> ShardLevelMetrics {
        ShardLevelMetrics(self.0 | other.0)
    }

    pub fn without(self, other: ShardLevelMetrics) -> ShardLevelMetrics {
        ShardLevelMetrics(self.0 & !other.0)
    }

    /// The metrics in the set, by their names, in Kinesis's order.
    pub fn names(self) -> Vec<&'static str> {
        ShardLevelMetric::EVERY
            .into_iter()
            .filter(|metric| self.contains(*metric))
            .map(ShardLevelMetric::name)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_all_make_sets_and_unknown_names_are_refused() {
        let set = ShardLevelMetrics::parse(["IncomingBytes", "IteratorAgeMilliseconds"])
            .expect("known names");
        assert_eq!(set.names(), ["IncomingBytes", "IteratorAgeMilliseconds"]);
        assert_eq!(
            ShardLevelMetrics::parse(["ALL"]).map(ShardLevelMetrics::names),
            Ok(ShardLevelMetric::EVERY.map(ShardLevelMetric::name).to_vec())
        );
        assert_eq!(ShardLevelMetrics::parse(["Incoming"]), Err("Incoming"));
        let fewer = ShardLevelMetrics::all().without(set);
        assert!(!fewer.contains(ShardLevelMetric::IncomingBytes));
        assert!(fewer.contains(ShardLevelMetric::OutgoingBytes));
        assert_eq!(
            ShardLevelMetrics::from_bits(u32::MAX),
            ShardLevelMetrics::all()
        );
    }
}
