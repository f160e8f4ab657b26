-- Stored events whose ids a batch reuses (idempotent retries).
SELECT position, event_id, stream_id, stream_version, event_type, schema_version,
       payload::text AS payload, metadata::text AS metadata, recorded_at, hash
FROM strata_events
WHERE event_id = ANY($1)
