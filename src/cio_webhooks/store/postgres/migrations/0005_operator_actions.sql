-- What operators did to events by hand (store/_contract.py Watch.record_operator_action):
-- retries, discards and re-ingests from the dashboard or the CLI, listed by every
-- process's dashboard.  Same columns and meanings as the SQLite inbox's.
CREATE TABLE operator_actions (
    id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at     double precision NOT NULL,  -- when, unix seconds
    "user" text NOT NULL,              -- who (quoted: unquoted, it is current_user)
    action text NOT NULL,              -- dlq_retry, dlq_discard, quarantine_reingest
    count  integer NOT NULL,           -- the events (or bodies) it changed
    detail text NOT NULL               -- which: the filter or the ids
);
CREATE INDEX operator_actions_at ON operator_actions (at);
