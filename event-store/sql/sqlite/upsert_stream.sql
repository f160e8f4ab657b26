INSERT INTO strata_streams (stream_id, category, version, last_hash) VALUES ($1, $2, $3, $4)
ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, last_hash = excluded.last_hash
