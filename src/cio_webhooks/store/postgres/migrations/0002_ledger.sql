-- The policies' ledger (store/postgres/_ledger.py): decisions, threshold hits, audit rows.
-- Unqualified: the migration runner sets search_path to the store's schema.
-- Times are unix seconds (double precision), as the Ledger contract passes them:
-- leases are compared with the caller's clock, windows with the events' own times.

-- The idempotency record: one decision per (rule, event, dry-run), made before any call.
CREATE TABLE decisions (
    rule         text NOT NULL,
    event_id     text NOT NULL,
    dry_run      boolean NOT NULL,
    person       text,
    window_start double precision,  -- threshold rules: the window [start, start + within) acted on
    state        text NOT NULL
                 CHECK (state IN ('in_flight', 'ok', 'failed', 'skipped', 'dry_run')),
    owner        text,              -- host:pid:token of the caller while in_flight
    lease_until  double precision,  -- while in_flight: another owner may take over after it
    attempts     integer NOT NULL DEFAULT 0,
    updated_at   double precision NOT NULL,
    PRIMARY KEY (rule, event_id, dry_run)
);
-- The windows acted on for a person (threshold rules only).
CREATE INDEX decisions_window ON decisions (rule, person, dry_run, window_start)
    WHERE window_start IS NOT NULL;

-- Each matching event of a person, once: what threshold windows are counted from.
CREATE TABLE hits (
    rule        text NOT NULL,
    person      text NOT NULL,
    event_id    text NOT NULL,
    occurred_at double precision NOT NULL,  -- the event's own time, not when it was received
    dry_run     boolean NOT NULL,
    PRIMARY KEY (rule, event_id, dry_run)
);
CREATE INDEX hits_person ON hits (rule, person, dry_run, occurred_at);

-- The audit: one row per call made (or recorded as skipped / dry run).
CREATE TABLE actions (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at double precision NOT NULL,
    event_id   text NOT NULL,
    rule       text NOT NULL,
    person     text,
    action     text NOT NULL,
    request    text NOT NULL,  -- JSON: what was (or would be) sent, never credentials
    status     text NOT NULL,  -- ok | failed | dry_run | skipped
    detail     text,
    dry_run    boolean NOT NULL
);
CREATE INDEX actions_event ON actions (event_id, rule);
CREATE INDEX actions_person ON actions (rule, person, created_at);
