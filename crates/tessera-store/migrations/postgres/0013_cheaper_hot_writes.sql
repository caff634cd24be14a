-- Cheaper writes on the hottest path: every message, run and event, and every fired board
-- slot (bench/schedules: 10,000 slots due in one second on two nodes).

-- Threads are updated far more often than they are created: every event moves `last_seq`,
-- every run start and end sets `active_run_id` and `status`. None of these columns is indexed,
-- so PostgreSQL rewrites the row on its own page (a heap-only tuple, no new entry in any of
-- the table's four indexes) when the page has room for the new version; half of each new page
-- is kept free for that. Pages written before this migration fill as before.
ALTER TABLE threads SET (fillfactor = 50);

-- These rows all belong to a thread (or a board item) whose own foreign key names the
-- deployment, and every statement reads and writes them scoped by deployment. A foreign key
-- from each row to `deployments` only checked that the deployment exists (not that it is the
-- thread's), at the cost of a lookup per inserted row: a fifth to a third of the cost of
-- inserting a message, run or event. Deployments are never deleted.
ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_deployment_id_fkey;
ALTER TABLE runs DROP CONSTRAINT IF EXISTS runs_deployment_id_fkey;
ALTER TABLE thread_events DROP CONSTRAINT IF EXISTS thread_events_deployment_id_fkey;
ALTER TABLE board_slots DROP CONSTRAINT IF EXISTS board_slots_deployment_id_fkey;
