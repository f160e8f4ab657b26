SELECT e.position, e.event_id, e.stream_id, e.stream_version, e.event_type, e.schema_version,
       e.payload::text AS payload, e.metadata::text AS metadata, e.recorded_at, e.hash
FROM jsonb_to_recordset($1::text::jsonb) AS wanted(stream_id text, after bigint)
JOIN strata_events e ON e.stream_id = wanted.stream_id AND e.stream_version > wanted.after
WHERE e.position <= $2
ORDER BY e.position
LIMIT $3
