-- Warehouse sinks (store/_contract.py SinkCursors): how far each sink has loaded, and
-- which loader may move that on.  Same columns and meanings as the SQLite inbox's.
-- Times are unix seconds (double precision) from the caller's clock.
CREATE TABLE sink_cursors (
    name             text PRIMARY KEY,   -- the warehouse sink's name
    url              text NOT NULL,      -- its display form, without credentials
    seq              bigint NOT NULL,    -- the last event loaded into it (0: none yet)
    updated_at       double precision,   -- when seq last moved
    last_received_at double precision,   -- received_at of the last event loaded
    error            text,               -- the last failure since the last success
    error_at         double precision,
    failures         integer NOT NULL,   -- consecutive failures
    owner            text,               -- the loader allowed to move seq ...
    lease_until      double precision,   -- ... until then
    registered_at    double precision NOT NULL
);
