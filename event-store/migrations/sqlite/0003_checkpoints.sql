-- Named positions in the global log: how far the relay (and later other
-- log followers) got. Positions only move forward.
CREATE TABLE strata_checkpoints (
    name TEXT PRIMARY KEY,
    position INTEGER NOT NULL CHECK (position >= 0),
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;
