-- After usage.lua: the size of one key (KEYS[1]), on its own node of a cluster. EXISTS
-- first: MEMORY USAGE alone still sees a key whose TTL has passed.
redis.call('EXISTS', KEYS[1])
return usage(KEYS[1])
