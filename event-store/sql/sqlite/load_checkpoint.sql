SELECT position FROM strata_checkpoints WHERE name = $1
