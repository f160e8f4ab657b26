-- Lock the heads of every stream a batch touches, in stream-id order so that
-- two writers never wait on each other in a cycle. Streams that do not exist
-- yet have no row to lock; their creation is guarded by the primary key.
SELECT stream_id, version, last_hash
FROM strata_streams
WHERE stream_id = ANY($1)
ORDER BY stream_id
FOR UPDATE
