-- Move the heads of existing streams (locked by lock_streams.sql) and create
-- new ones. A concurrent creator of the same stream makes the INSERT fail on
-- strata_streams_pkey; the committer then retries the batch from scratch.
WITH updated AS (
    UPDATE strata_streams AS s
    SET version = u.version, last_hash = u.last_hash
    FROM UNNEST($1::text[], $2::bigint[], $3::bytea[]) AS u(stream_id, version, last_hash)
    WHERE s.stream_id = u.stream_id
    RETURNING 1
), created AS (
    INSERT INTO strata_streams (stream_id, category, version, last_hash)
    SELECT * FROM UNNEST($4::text[], $5::text[], $6::bigint[], $7::bytea[])
    RETURNING 1
)
SELECT (SELECT count(*) FROM updated) AS updated, (SELECT count(*) FROM created) AS created
