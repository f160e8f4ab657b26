-- The log's identity: an id made when this migration first runs, and an
-- epoch an operator raises after restoring the database from a backup
-- (`strata migrate --new-epoch`). The relay stamps both on every bus record
-- (`strata-log-id`) and refuses a topic or stream written by another log.
CREATE TABLE strata_log_identity (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    id text NOT NULL,
    epoch bigint NOT NULL DEFAULT 0 CHECK (epoch >= 0),
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO strata_log_identity (id) VALUES (replace(gen_random_uuid()::text, '-', ''));
