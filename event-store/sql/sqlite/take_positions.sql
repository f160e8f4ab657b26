-- Runs inside BEGIN IMMEDIATE: the write lock makes this the only writer.
UPDATE strata_log_head SET position = position + $1 WHERE id = 1 RETURNING position - $1 AS base
