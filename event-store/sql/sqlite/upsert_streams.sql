-- The heads of every stream a batch wrote, in one statement. $1 is a JSON
-- array of [stream_id, category, version, last_hash hex]. (`WHERE true` lets
-- SQLite parse the upsert clause after a SELECT.)
INSERT INTO strata_streams (stream_id, category, version, last_hash)
SELECT h.value ->> 0, h.value ->> 1, h.value ->> 2, unhex(h.value ->> 3)
FROM json_each($1) AS h
WHERE true
ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, last_hash = excluded.last_hash
