-- Stored events whose ids a batch reuses (idempotent retries).
SELECT position, event_id, stream_id, stream_version, event_type, schema_version,
       payload, metadata, recorded_at, hash
FROM strata_events
WHERE event_id IN (SELECT unhex(value) FROM json_each($1))
