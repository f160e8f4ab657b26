SELECT id, epoch FROM strata_log_identity
