SELECT stream_id, version, last_hash
FROM strata_streams
WHERE stream_id > $1
ORDER BY stream_id
LIMIT $2
