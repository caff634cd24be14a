-- Maintenance of task boards: old slot records are pruned, and stale upload chunks deleted.

-- The latest slot of an item whose older records were pruned: a slot at or before it counts
-- as fired (its record is gone), so pruning never lets an old slot fire again.
ALTER TABLE board_items ADD COLUMN slots_pruned_through BIGINT;

-- Orphaned chunks (an upload whose node died before it committed) are found by the files
-- that do not point at them.
CREATE INDEX workspace_files_blob ON workspace_files (blob_id);
CREATE INDEX blob_chunks_created ON blob_chunks (created_at);
