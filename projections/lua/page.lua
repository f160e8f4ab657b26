-- A page of an index of the live generation, with each member's document.
-- ARGV: root, index, lowest score, count.
local g = redis.call('GET', ARGV[1] .. 'live')
if not g or redis.call('EXISTS', ARGV[1] .. 'g' .. g .. ':marker') == 0 then return {} end
local base = ARGV[1] .. 'g' .. g .. ':'
local entries = redis.call('ZRANGEBYSCORE', base .. 'i:' .. ARGV[2], ARGV[3], '+inf', 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[4]))
local out = {}
for i = 1, #entries, 2 do
  out[#out + 1] = {entries[i], entries[i + 1], redis.call('HGETALL', base .. 'd:' .. entries[i])}
end
return out
