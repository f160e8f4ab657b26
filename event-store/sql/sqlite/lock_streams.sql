-- The heads of every stream a batch touches (the write lock is already held).
SELECT stream_id, version, last_hash
FROM strata_streams
WHERE stream_id IN (SELECT value FROM json_each($1))
ORDER BY stream_id
