-- Which disk a worker's copies live on. A worker names its data directory
-- with a random id made when the directory is; registering with another id
-- than before means the directory was replaced (a new disk, or a wiped
-- one): every copy it held is gone, and membership tells it which, so it
-- rebuilds them from their peers before they vote or lead again.
ALTER TABLE workers ADD COLUMN disk_id TEXT NOT NULL DEFAULT '';
