-- A session advisory lock: held until released or until the connection ends.
-- 1937011297 is "stra" in ASCII, Strata's namespace for lock keys.
SELECT pg_try_advisory_lock(1937011297, hashtext($1))
