SELECT position, event_id, stream_id, stream_version, event_type, schema_version,
       payload, metadata, recorded_at, hash
FROM strata_events
WHERE category = $3 AND position > $1
ORDER BY position
LIMIT $2
