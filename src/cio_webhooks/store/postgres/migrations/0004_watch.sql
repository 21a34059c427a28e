-- The dashboard and the alerts (store/_contract.py Watch).  Same columns and meanings as
-- the SQLite inbox's, except ack: an array here, comma-separated text there.

-- What each receiver process answered, minute by minute (its running totals, written
-- again and again while the minute lasts).
CREATE TABLE traffic (
    minute             double precision NOT NULL,  -- the minute's start, unix seconds
    process            text NOT NULL,              -- the receiver that counted it
    stored             integer NOT NULL,
    duplicate          integer NOT NULL,
    quarantined        integer NOT NULL,
    rejected_signature integer NOT NULL,
    too_large          integer NOT NULL,
    store_unavailable  integer NOT NULL,
    ack                integer[] NOT NULL,         -- answers per latency bucket
    PRIMARY KEY (minute, process)
);

-- Where each alert rule stands, shared by every worker.
CREATE TABLE alert_states (
    rule        text PRIMARY KEY,
    firing      boolean NOT NULL,
    value       double precision,
    changed_at  double precision NOT NULL,
    notified_at double precision,
    version     integer NOT NULL  -- compare-and-set: changes only from the version read
);
