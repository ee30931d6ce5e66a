-- Which copies of a shard's current segment vote (Raft's configuration;
-- libs/types/src/voters.rs). `voter_ids` is the committed configuration;
-- `next_voter_ids`, when not empty, the one it is changing to (joint
-- consensus). Replicas in neither are learners. Existing shards: every
-- copy votes, as before.

ALTER TABLE shards ADD COLUMN voter_ids TEXT[] NOT NULL DEFAULT '{}';
ALTER TABLE shards ADD COLUMN next_voter_ids TEXT[] NOT NULL DEFAULT '{}';
UPDATE shards SET voter_ids = array_prepend(leader_worker_id, replica_worker_ids);
