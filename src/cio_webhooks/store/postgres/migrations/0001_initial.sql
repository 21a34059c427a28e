-- The inbox: events, the handlers that ran on them, and quarantined bodies.
-- Same columns and meanings as the SQLite inbox (store/sqlite/_inbox.py), plus
-- delivery_id: data.delivery_id, taken from the parsed event at put, so that
-- delivery_metrics reads a column instead of parsing bytea bodies (which need
-- not even be valid UTF-8).
CREATE TABLE events (
    seq             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        text NOT NULL UNIQUE,
    object_type     text NOT NULL,
    metric          text NOT NULL,
    occurred_at     bigint,
    received_at     double precision NOT NULL,
    body            bytea NOT NULL,
    state           text NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'retrying', 'done', 'dead', 'discarded')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at double precision NOT NULL,
    last_error      text,
    updated_at      double precision NOT NULL,
    backfilled      boolean NOT NULL DEFAULT false,
    claim_token     text, -- the dispatcher's claim on the event; NULL when none is held
    delivery_id     text
);
CREATE INDEX events_due ON events (next_attempt_at) WHERE state IN ('pending', 'retrying');
CREATE INDEX events_received ON events (received_at);
CREATE INDEX events_dead ON events (seq) WHERE state = 'dead';

CREATE TABLE handler_runs (
    seq        bigint NOT NULL,
    handler    text NOT NULL,
    status     text NOT NULL,
    attempts   integer NOT NULL,
    last_error text,
    updated_at double precision NOT NULL,
    PRIMARY KEY (seq, handler)
);

CREATE TABLE quarantine (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at double precision NOT NULL,
    event_id    text,
    reason      text NOT NULL,
    body        bytea NOT NULL
);
-- A quarantined event_id is kept once (Customer.io retries what it was answered 200 for
-- only on timeouts, but a body can be posted again by hand).
CREATE UNIQUE INDEX quarantine_event_id ON quarantine (event_id) WHERE event_id IS NOT NULL;
