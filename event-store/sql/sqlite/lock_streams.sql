-- The log head and the heads of every stream a batch touches (the write lock
-- is already held: BEGIN IMMEDIATE). Streams that do not exist yet have no
-- row; the row with a NULL stream_id carries the position when none of them
-- exists.
SELECT h.position AS log_position, s.stream_id, s.version, s.last_hash
FROM strata_log_head AS h
LEFT JOIN strata_streams AS s ON s.stream_id IN (SELECT value FROM json_each($1))
WHERE h.id = 1
ORDER BY s.stream_id
