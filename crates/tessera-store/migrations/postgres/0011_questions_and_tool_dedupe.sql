-- Tools (issue 8 gaps): the internal `ask_user` tool, and side-effecting tool calls repeated by a
-- resumed run.

-- A call waiting on a person is either a confirmation of a tool (`confirmation`) or an
-- `ask_user` question (`question`: `preview` holds {question, choices?}, `result` the answer).
ALTER TABLE pending_actions ADD COLUMN kind TEXT NOT NULL DEFAULT 'confirmation';

-- The tool call that emitted a platform event: a run resumed after a crash that repeats the
-- call gets the stored event back instead of a second one. NULL for events of no call.
ALTER TABLE platform_events ADD COLUMN call_id TEXT;
CREATE UNIQUE INDEX platform_events_call ON platform_events (run_id, call_id);
