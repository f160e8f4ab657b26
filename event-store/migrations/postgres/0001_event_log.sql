-- The event log. Positions are assigned from strata_log_head inside the
-- appending transaction (see src/postgres/append.sql), so they follow commit
-- order; nothing else writes these tables.

CREATE TABLE strata_log_head (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    position bigint NOT NULL
);
INSERT INTO strata_log_head (id, position) VALUES (true, 0);

CREATE TABLE strata_streams (
    stream_id text PRIMARY KEY,
    category text NOT NULL,
    version bigint NOT NULL CHECK (version > 0),
    last_hash bytea NOT NULL CHECK (octet_length(last_hash) = 32)
);
CREATE INDEX strata_streams_category ON strata_streams (category);

CREATE TABLE strata_events (
    position bigint PRIMARY KEY,
    event_id uuid NOT NULL,
    stream_id text NOT NULL,
    stream_version bigint NOT NULL,
    category text NOT NULL,
    event_type text NOT NULL,
    schema_version integer NOT NULL,
    payload jsonb NOT NULL,
    metadata jsonb NOT NULL,
    recorded_at timestamptz NOT NULL,
    hash bytea NOT NULL,
    CONSTRAINT strata_events_event_id UNIQUE (event_id),
    CONSTRAINT strata_events_stream_version UNIQUE (stream_id, stream_version)
);
CREATE INDEX strata_events_category_position ON strata_events (category, position);
