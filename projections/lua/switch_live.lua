-- Makes the rebuilt generation live (if it is still the one rebuilding) and tells
-- waiting readers. ARGV: root, generation, channel. Returns 1 switched, 0 not.
if redis.call('HGET', ARGV[1] .. 'meta', 'rebuilding') ~= ARGV[2] then return 0 end
if redis.call('EXISTS', ARGV[1] .. 'g' .. ARGV[2] .. ':marker') == 0 then return 0 end
redis.call('SET', ARGV[1] .. 'live', ARGV[2])
redis.call('HDEL', ARGV[1] .. 'meta', 'rebuilding')
redis.call('PUBLISH', ARGV[3], '')
return 1
