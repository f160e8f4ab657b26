-- The single writer hands out positions under the write lock, so they follow
-- commit order and a read after a position never skips a later commit.
SELECT position, event_id, stream_id, stream_version, event_type, schema_version,
       payload, metadata, recorded_at, hash
FROM strata_events
WHERE position > $1
ORDER BY position
LIMIT $2
