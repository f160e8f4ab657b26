-- The critical section. Taking positions from the single strata_log_head row
-- locks it until this transaction ends, so positions are handed out in commit
-- order: a reader that sees position P also sees every committed position
-- below P. Keep this the last statement before COMMIT.
-- The NOTIFY is delivered at commit and wakes every subscriber.
WITH head AS (
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
SELECT base, pg_notify('strata_events', (base + $1)::text)::text AS notified FROM head
