SELECT DISTINCT category FROM strata_streams ORDER BY category
