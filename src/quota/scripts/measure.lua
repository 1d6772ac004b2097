-- After usage.lua: measures and settles a tenant's keys (see quota/mod.rs).
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
-- In a cluster a script reaches one slot: each key is measured on its own node (size.lua)
-- and its size comes here as ARGV[5..], field, size, field, size, ...
local given = {}
for i = 5, #ARGV - 1, 2 do
  if not seen[ARGV[i]] then
    seen[ARGV[i]] = true
    fields[#fields + 1] = ARGV[i]
    given[#fields] = tonumber(ARGV[i + 1]) or 0
  end
end
if #fields > 0 then
  local olds = redis.call('HMGET', KEYS[2], unpack(fields))
  -- MEMORY USAGE alone still sees a key whose TTL has passed; EXISTS expires it.
  if #keys > 0 then
    redis.call('EXISTS', unpack(keys))
  end
  local changed, gone = {}, {}
  for i, field in ipairs(fields) do
    local size = given[i] or usage(keys[i])
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
