-- The rows of a batch, in statements of up to 64 rows each: the committer
-- appends one `(?, …)` group of the eleven columns below per row (one call
-- into the SQLite thread per statement instead of one per row; bound values,
-- so nothing is parsed twice). Positions were taken under the write lock.
INSERT INTO strata_events (position, event_id, stream_id, stream_version, category, event_type,
                           schema_version, payload, metadata, recorded_at, hash)
VALUES
