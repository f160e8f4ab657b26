-- Makes ARGV[2] the live generation unless one is live already; returns the live one.
-- ARGV: root, generation.
local live = redis.call('GET', ARGV[1] .. 'live')
if live then return tonumber(live) end
redis.call('SET', ARGV[1] .. 'live', ARGV[2])
redis.call('SET', ARGV[1] .. 'g' .. ARGV[2] .. ':marker', ARGV[2])
if tonumber(redis.call('GET', ARGV[1] .. 'next') or '0') < tonumber(ARGV[2]) then redis.call('SET', ARGV[1] .. 'next', ARGV[2]) end
return tonumber(ARGV[2])
