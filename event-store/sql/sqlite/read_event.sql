-- One event by id (command idempotency: "was this command already applied?").
SELECT position, event_id, stream_id, stream_version, event_type, schema_version,
       payload, metadata, recorded_at, hash
FROM strata_events
WHERE event_id = $1
