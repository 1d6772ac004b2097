local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local entries = redis.call('HGETALL', KEYS[2])
local others, mine = 0, 0
for i = 1, #entries, 2 do
  local b, e = string.match(entries[i + 1], '^(%d+):(%d+)$')
  b, e = tonumber(b), tonumber(e)
  if entries[i] == ARGV[1] then
    mine = b or 0
  elseif b == nil or e < now then
    redis.call('HDEL', KEYS[2], entries[i])
  else
    others = others + b
  end
end
local need, limit = tonumber(ARGV[2]), tonumber(ARGV[4])
local room = limit - used - others - mine
if room < need then
  return {0, used, others + mine}
end
local grant = math.min(room, math.max(need, math.min(tonumber(ARGV[3]), math.floor(room / 16))))
redis.call('HSET', KEYS[2], ARGV[1], string.format('%d:%d', mine + grant, now + tonumber(ARGV[5])))
return {grant, used, others + mine + grant}
