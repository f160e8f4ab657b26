-- The embedded event log. SQLite has one writer at a time, so positions taken
-- from strata_log_head inside the write transaction follow commit order.

CREATE TABLE strata_log_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    position INTEGER NOT NULL
);
INSERT INTO strata_log_head (id, position) VALUES (1, 0);

CREATE TABLE strata_streams (
    stream_id TEXT PRIMARY KEY,
    category TEXT NOT NULL,
    version INTEGER NOT NULL CHECK (version > 0),
    last_hash BLOB NOT NULL CHECK (length(last_hash) = 32)
) WITHOUT ROWID;
CREATE INDEX strata_streams_category ON strata_streams (category);

CREATE TABLE strata_events (
    position INTEGER PRIMARY KEY,
    event_id BLOB NOT NULL UNIQUE,
    stream_id TEXT NOT NULL,
    stream_version INTEGER NOT NULL,
    category TEXT NOT NULL,
    event_type TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    payload TEXT NOT NULL,
    metadata TEXT NOT NULL,
    recorded_at INTEGER NOT NULL,
    hash BLOB NOT NULL,
    UNIQUE (stream_id, stream_version)
);
CREATE INDEX strata_events_category_position ON strata_events (category, position);
