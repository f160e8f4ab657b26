-- A document of the live generation, or nothing. ARGV: root, document key.
local g = redis.call('GET', ARGV[1] .. 'live')
if not g or redis.call('EXISTS', ARGV[1] .. 'g' .. g .. ':marker') == 0 then return {} end
return redis.call('HGETALL', ARGV[1] .. 'g' .. g .. ':d:' .. ARGV[2])
