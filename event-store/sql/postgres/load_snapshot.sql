SELECT stream_id, snapshot_version, stream_version, state::text AS state, taken_at
FROM strata_snapshots
WHERE stream_id = $1
