-- The events of several streams, each after its own version, up to a
-- position, in log order. Each stream is read on its own key, in version
-- order (which is its position order), at most $3 events: the first $3 of
-- the union by position are among them. Per stream, so the plan stays on
-- (stream_id, stream_version) however the statistics looked when it was
-- made: a join of the whole list once became a scan of the log up to $2.
SELECT e.position, e.event_id, e.stream_id, e.stream_version, e.event_type, e.schema_version,
       e.payload::text AS payload, e.metadata::text AS metadata, e.recorded_at, e.hash
FROM jsonb_to_recordset($1::text::jsonb) AS wanted(stream_id text, after bigint)
CROSS JOIN LATERAL (
    SELECT *
    FROM strata_events
    WHERE stream_id = wanted.stream_id AND stream_version > wanted.after AND position <= $2
    ORDER BY stream_version
    LIMIT $3
) AS e
ORDER BY e.position
LIMIT $3
