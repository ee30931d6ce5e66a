-- On-demand capacity: a stream's warm throughput (MiB/s it keeps capacity
-- for while set), and each account's minimum-throughput billing commitment
-- (On-Demand Advantage), which warm throughput requires.
ALTER TABLE streams ADD COLUMN warm_throughput_mibps INT;

CREATE TABLE account_settings (
    account_id        TEXT PRIMARY KEY,
    -- ENABLED, or DISABLED; a disable asked for before the 24 h minimum
    -- takes effect at earliest_end_at (ENABLED_UNTIL_EARLIEST_ALLOWED_END).
    commitment_status TEXT NOT NULL CHECK (commitment_status IN ('ENABLED', 'DISABLED')),
    started_at        TIMESTAMPTZ,
    ends_at           TIMESTAMPTZ
);
