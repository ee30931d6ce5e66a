-- Retention (IncreaseStreamRetentionPeriod / DecreaseStreamRetentionPeriod):
-- records that arrived before `expired_before_ms` stay expired whatever the
-- retention period becomes. An increase raises it to the moment records
-- were expiring from under the old period, so a longer period keeps what
-- had not yet expired and never brings back what had (`ShardMapEntry.
-- expired_before_ms`, `freshet_shardmap::unexpired_from`).
ALTER TABLE streams
    ADD COLUMN expired_before_ms BIGINT NOT NULL DEFAULT 0;
