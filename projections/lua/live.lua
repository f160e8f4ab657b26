-- The live generation, or false when none (or its marker is gone). ARGV: root.
local g = redis.call('GET', ARGV[1] .. 'live')
if not g or redis.call('EXISTS', ARGV[1] .. 'g' .. g .. ':marker') == 0 then return false end
return tonumber(g)
