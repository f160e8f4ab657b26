-- The whole write of a batch, in one round trip, as the last statement
-- before COMMIT.
--
-- `updated` moves the heads of existing streams (locked by lock_streams.sql);
-- `created` inserts new ones: a concurrent creator of the same stream makes it
-- fail on strata_streams_pkey, and the committer retries the batch.
--
-- `head` moves the single strata_log_head row, which lock_streams.sql locked
-- first in this transaction: the batch was planned (and hashed) for the
-- positions after `base`, and the committer checks that `base` is the
-- position it locked. The lock is held until this transaction ends, so
-- positions are handed out in commit order and a reader that sees position P
-- also sees every committed position below P. The NOTIFY is delivered at
-- commit.
WITH updated AS (
    UPDATE strata_streams AS s
    SET version = u.version, last_hash = u.last_hash
    FROM UNNEST($12::text[], $13::bigint[], $14::bytea[]) AS u(stream_id, version, last_hash)
    WHERE s.stream_id = u.stream_id
    RETURNING 1
), created AS (
    INSERT INTO strata_streams (stream_id, category, version, last_hash)
    SELECT * FROM UNNEST($15::text[], $16::text[], $17::bigint[], $18::bytea[])
    RETURNING 1
), head AS (
    UPDATE strata_log_head SET position = position + $1 WHERE id
    RETURNING position - $1 AS base
), inserted AS (
    INSERT INTO strata_events (position, event_id, stream_id, stream_version, category,
                               event_type, schema_version, payload, metadata, recorded_at, hash)
    SELECT head.base + e.ord, e.event_id, e.stream_id, e.stream_version, e.category,
           e.event_type, e.schema_version, e.payload::jsonb, e.metadata::jsonb, e.recorded_at, e.hash
    FROM head,
         UNNEST($2::uuid[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::int[],
                $8::text[], $9::text[], $10::timestamptz[], $11::bytea[])
         WITH ORDINALITY AS e(event_id, stream_id, stream_version, category, event_type,
                              schema_version, payload, metadata, recorded_at, hash, ord)
)
SELECT base,
       (SELECT count(*) FROM updated) AS updated,
       (SELECT count(*) FROM created) AS created,
       pg_notify('strata_events', (base + $1)::text)::text AS notified
FROM head
