-- Never moves a checkpoint backwards (a late writer cannot undo progress).
INSERT INTO strata_checkpoints (name, position, updated_at) VALUES ($1, $2, $3)
ON CONFLICT (name) DO UPDATE
SET position = excluded.position, updated_at = excluded.updated_at
WHERE strata_checkpoints.position < excluded.position
