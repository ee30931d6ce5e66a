-- A fence for the steps of a split, merge or move: every time a shard
-- starts being sealed (OPEN -> CLOSING) or stops (CLOSING -> OPEN, by a
-- reopen or a move), its close generation goes up. Completing a seal
-- (CLOSED, or a move's next segment) must present the generation the
-- shard was closed at, so a control plane that paused between sealing and
-- completing cannot finish a seal that was reopened and written past
-- meanwhile (which would reuse sequence numbers).
ALTER TABLE shards ADD COLUMN close_generation BIGINT NOT NULL DEFAULT 0;
