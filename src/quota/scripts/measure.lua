-- Exact sizes: Redis samples 5 elements of a collection by default, and a skewed one (many
-- small members, a few huge) would be counted at a fraction of what it holds. Every element
-- is measured (about 16 ns each) while this call has measured fewer than 200,000 in all
-- (about 3 ms of Redis); past that budget, and for a collection of more than 100,000
-- elements, 10,000 samples, so that one call never holds Redis for long. Reconciliation
-- measures every key again later, each call with a fresh budget.
local LEN = {list = 'LLEN', set = 'SCARD', zset = 'ZCARD', hash = 'HLEN', stream = 'XLEN'}
local budget = 200000
local function usage(key)
  local len = LEN[redis.call('TYPE', key)['ok']]
  local samples = 0
  if len then
    local n = redis.call(len, key)
    if n > 100000 or n > budget then
      samples = 10000
    else
      budget = budget - n
    end
  end
  return redis.call('MEMORY', 'USAGE', key, 'SAMPLES', samples) or 0
end
local plen = tonumber(ARGV[4])
local delta = 0
-- One EXISTS, HMGET and HSET for the batch rather than a call of each per key: a Lua call
-- costs Redis about as much as the command it runs.
local keys, fields, seen = {}, {}, {}
for i = 4, #KEYS do
  local field = string.sub(KEYS[i], plen + 1)
  -- A SCAN may return a key twice; measured twice, its change would count twice.
  if not seen[field] then
    seen[field] = true
    keys[#keys + 1] = KEYS[i]
    fields[#fields + 1] = field
  end
end
if #fields > 0 then
  local olds = redis.call('HMGET', KEYS[2], unpack(fields))
  -- MEMORY USAGE alone still sees a key whose TTL has passed; EXISTS expires it.
  redis.call('EXISTS', unpack(keys))
  local changed, gone = {}, {}
  for i, field in ipairs(fields) do
    local size = usage(keys[i])
    local old = tonumber(olds[i]) or 0
    -- An overwrite of the same size (the common cache refresh) leaves the hash alone.
    if size ~= old then
      if size > 0 then
        changed[#changed + 1] = field
        changed[#changed + 1] = size
      else
        gone[#gone + 1] = field
      end
      delta = delta + size - old
    end
  end
  if #changed > 0 then
    redis.call('HSET', KEYS[2], unpack(changed))
  end
  if #gone > 0 then
    redis.call('HDEL', KEYS[2], unpack(gone))
  end
end
local used
if delta ~= 0 then
  used = redis.call('INCRBY', KEYS[1], delta)
else
  used = tonumber(redis.call('GET', KEYS[1]) or '0')
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local entries = redis.call('HGETALL', KEYS[3])
local leased = 0
for i = 1, #entries, 2 do
  local b, e = string.match(entries[i + 1], '^(%d+):(%d+)$')
  b, e = tonumber(b) or 0, tonumber(e) or 0
  if entries[i] == ARGV[1] then
    b = b - tonumber(ARGV[2])
    if b > 0 then
      redis.call('HSET', KEYS[3], ARGV[1], string.format('%d:%d', b, now + tonumber(ARGV[3])))
      leased = leased + b
    else
      redis.call('HDEL', KEYS[3], ARGV[1])
    end
  elseif e >= now then
    leased = leased + b
  end
end
return {used, leased}
