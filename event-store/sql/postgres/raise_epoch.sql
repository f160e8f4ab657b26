UPDATE strata_log_identity SET epoch = epoch + 1 RETURNING id, epoch
