SELECT stream_id, snapshot_version, stream_version, state, taken_at
FROM strata_snapshots
WHERE stream_id = $1
