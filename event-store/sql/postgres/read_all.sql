-- Positions follow commit order (insert_events.sql), so a plain read of the
-- committed rows after a position never skips an event that commits later.
SELECT position, event_id, stream_id, stream_version, event_type, schema_version,
       payload::text AS payload, metadata::text AS metadata, recorded_at, hash
FROM strata_events
WHERE position > $1
ORDER BY position
LIMIT $2
