-- Lock the log head, then the heads of every stream a batch touches (in
-- stream-id order), and return the log head's position with each stream
-- head. The LATERAL reference makes the log head the first lock taken, so
-- every writer takes the same locks in the same order (no cycle), and the
-- batch knows its positions before it is planned: the hashes cover them.
-- Streams that do not exist yet have no row; the row with a NULL stream_id
-- carries the position when none of them exists.
SELECT h.position AS log_position, s.stream_id, s.version, s.last_hash
FROM (SELECT position FROM strata_log_head WHERE id FOR UPDATE) AS h
LEFT JOIN LATERAL (
    SELECT stream_id, version, last_hash
    FROM strata_streams
    WHERE stream_id = ANY($1) AND h.position >= 0
    ORDER BY stream_id
    FOR UPDATE
) AS s ON true
