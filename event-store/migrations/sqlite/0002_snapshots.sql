-- Aggregate snapshots: a cache beside the log (one row per stream, the newest
-- one). Losing this table loses nothing: aggregates fold from the log.
CREATE TABLE strata_snapshots (
    stream_id TEXT PRIMARY KEY,
    snapshot_version INTEGER NOT NULL,
    stream_version INTEGER NOT NULL CHECK (stream_version > 0),
    state TEXT NOT NULL,
    taken_at INTEGER NOT NULL
) WITHOUT ROWID;
