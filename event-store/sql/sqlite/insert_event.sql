INSERT INTO strata_events (position, event_id, stream_id, stream_version, category, event_type,
                           schema_version, payload, metadata, recorded_at, hash)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
