-- Keeps the newest snapshot of a stream; a snapshot of another state format
-- (snapshot_version) always replaces the stored one, so a format change does
-- not leave an unusable snapshot in place forever.
INSERT INTO strata_snapshots (stream_id, snapshot_version, stream_version, state, taken_at)
VALUES ($1, $2, $3, $4::jsonb, $5)
ON CONFLICT (stream_id) DO UPDATE
SET snapshot_version = excluded.snapshot_version,
    stream_version = excluded.stream_version,
    state = excluded.state,
    taken_at = excluded.taken_at
WHERE strata_snapshots.stream_version < excluded.stream_version
   OR strata_snapshots.snapshot_version <> excluded.snapshot_version
