-- The run queue: each thread's queued runs in order. The workers' claim asks, for every queued
-- run it considers, whether it is the first queued run of its thread; `runs_thread` answers by
-- walking the thread's whole history of finished runs, this index by reading one entry.
CREATE INDEX runs_queued_thread ON runs (thread_id, id) WHERE status = 'queued';
