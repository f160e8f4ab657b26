-- Named positions in the global log: how far the relay (and later other
-- log followers) got. Positions only move forward.
CREATE TABLE strata_checkpoints (
    name text PRIMARY KEY,
    position bigint NOT NULL CHECK (position >= 0),
    updated_at timestamptz NOT NULL
);
