-- Reserves the next generation number above the live one and marks it. ARGV: root.
local n = redis.call('INCR', ARGV[1] .. 'next')
local live = tonumber(redis.call('GET', ARGV[1] .. 'live') or '0')
if n <= live then n = live + 1; redis.call('SET', ARGV[1] .. 'next', n) end
redis.call('SET', ARGV[1] .. 'g' .. n .. ':marker', n)
return n
