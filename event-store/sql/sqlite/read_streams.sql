SELECT e.position, e.event_id, e.stream_id, e.stream_version, e.event_type, e.schema_version,
       e.payload, e.metadata, e.recorded_at, e.hash
FROM json_each($1) AS wanted
JOIN strata_events e ON e.stream_id = json_extract(wanted.value, '$.stream_id')
                    AND e.stream_version > json_extract(wanted.value, '$.after')
WHERE e.position <= $2
ORDER BY e.position
LIMIT $3
