SELECT position FROM strata_log_head WHERE id = 1
