-- Aggregate snapshots: a cache beside the log (one row per stream, the newest
-- one). Losing this table loses nothing: aggregates fold from the log.
CREATE TABLE strata_snapshots (
    stream_id text PRIMARY KEY,
    snapshot_version integer NOT NULL,
    stream_version bigint NOT NULL CHECK (stream_version > 0),
    state jsonb NOT NULL,
    taken_at timestamptz NOT NULL
);
