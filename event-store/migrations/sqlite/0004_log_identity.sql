-- The log's identity: an id made when this migration first runs, and an
-- epoch an operator raises after restoring the database from a backup
-- (`strata migrate --new-epoch`). The relay stamps both on every bus record
-- (`strata-log-id`) and refuses a topic or stream written by another log.
CREATE TABLE strata_log_identity (
    only_row INTEGER PRIMARY KEY DEFAULT 1 CHECK (only_row = 1),
    id TEXT NOT NULL,
    epoch INTEGER NOT NULL DEFAULT 0 CHECK (epoch >= 0),
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
INSERT INTO strata_log_identity (id) VALUES (lower(hex(randomblob(16))));
