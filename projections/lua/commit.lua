-- One batch's commit, all or nothing: the generation still current, every stream's
-- expected version, then documents, index entries, stream versions, dead letters,
-- the position and the change notice. ARGV: base, root, generation, then the
-- guards, writes and dead letters as counted lists. Returns {1} done, {0, stream,
-- actual} a guard failed, {2} retired, {3} lost.
local base = ARGV[1]
local root = ARGV[2]
local generation = ARGV[3]
local live = redis.call('GET', root .. 'live')
if live ~= generation and redis.call('HGET', root .. 'meta', 'rebuilding') ~= generation then
  if not live then return {3} end
  return {2}
end
if redis.call('EXISTS', base .. 'marker') == 0 then return {3} end
local i = 4
local n = tonumber(ARGV[i]); i = i + 1
local streams = base .. 'streams'
local first = i
-- Guards in chunks: one HMGET and one HSET per chunk, not two calls per stream.
local chunk = 500
for start = 0, n - 1, chunk do
  local count = math.min(chunk, n - start)
  local names = {}
  for k = 1, count do names[k] = ARGV[first + (start + k - 1) * 3] end
  local actual = redis.call('HMGET', streams, unpack(names))
  for k = 1, count do
    local expected = ARGV[first + (start + k - 1) * 3 + 1]
    local a = tonumber(actual[k] or '0')
    if expected ~= '' and a ~= tonumber(expected) then return {0, names[k], a} end
  end
end
for start = 0, n - 1, chunk do
  local count = math.min(chunk, n - start)
  local pairs = {}
  for k = 1, count do
    local at = first + (start + k - 1) * 3
    pairs[2 * k - 1] = ARGV[at]
    pairs[2 * k] = ARGV[at + 2]
  end
  redis.call('HSET', streams, unpack(pairs))
end
i = first + n * 3
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  local op = ARGV[i]
  if op == 'F' then
    redis.call('HSET', base .. 'd:' .. ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]); i = i + 4
  elseif op == 'M' then
    local key = base .. 'd:' .. ARGV[i + 1]
    local current = tonumber(redis.call('HGET', key, ARGV[i + 2]) or '')
    if current == nil or tonumber(ARGV[i + 3]) > current then redis.call('HSET', key, ARGV[i + 2], ARGV[i + 3]) end
    i = i + 4
  elseif op == 'X' then
    redis.call('DEL', base .. 'd:' .. ARGV[i + 1]); i = i + 2
  elseif op == 'A' then
    redis.call('ZADD', base .. 'i:' .. ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]); i = i + 4
  elseif op == 'R' then
    redis.call('ZREM', base .. 'i:' .. ARGV[i + 1], ARGV[i + 2]); i = i + 3
  else
    return redis.error_reply('unknown write op ' .. tostring(op))
  end
end
n = tonumber(ARGV[i]); i = i + 1
local stats = base .. 'stats'
for _ = 1, n do
  redis.call('HSETNX', base .. 'parked', ARGV[i], ARGV[i + 1])
  if redis.call('HSETNX', base .. 'dead', ARGV[i + 2], ARGV[i + 3]) == 1 then redis.call('HINCRBY', stats, 'dead', 1) end
  i = i + 4
end
local position = tonumber(ARGV[i])
if position > tonumber(redis.call('HGET', stats, 'position') or '0') then redis.call('HSET', stats, 'position', ARGV[i]) end
redis.call('HINCRBY', stats, 'events', ARGV[i + 1])
-- Readers waiting for these streams or documents are told (live generation only).
if live == generation then redis.call('PUBLISH', ARGV[i + 2], ARGV[i + 3]) end
return {1}
