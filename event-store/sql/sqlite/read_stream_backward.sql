SELECT position, event_id, stream_id, stream_version, event_type, schema_version,
       payload, metadata, recorded_at, hash
FROM strata_events
WHERE stream_id = $1 AND stream_version <= $2
ORDER BY stream_version DESC
LIMIT $3
