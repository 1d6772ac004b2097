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
