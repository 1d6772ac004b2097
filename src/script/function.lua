-- The prelude respite puts in a tenant's FUNCTION library, after its `#!lua name=...` line
-- (see script/prelude.rs), joined into one line like the EVAL prelude.
--
-- While the library loads, Redis offers only redis.register_function (no other globals):
-- the prelude's `redis` registers each function under the tenant's names (@NAMES@ before
-- the name) with a callback that, when called, sets up the table core.lua makes (the
-- runtime globals exist then), takes the prefix off the declared keys, and calls the
-- tenant's function. The library's own `redis` is that table from then on. The tenant's
-- prefix (@PREFIX@) and mode (@MODE@) are written in, as a library is the tenant's own.
local __respite_global_redis = function() return redis end
local redis
redis = (function(R0, global)
local P, H, NAMES, FAST = @PREFIX@, @MODE@, @NAMES@, @FAST@
local shadow, declare
local function enter(keys, args, callback)
local R = global()
if H == 'c' and R.acl_check_cmd('get', 'respite:confinement-check') then
error(R.error_reply('ERR respite: refusing to run a tenant function as an unconfined Redis user'))
end
if not shadow then
shadow, declare = (@CORE@)(P, R, FAST, {})
redis = shadow
end
declare(keys)
return callback(keys, args)
end
local function register(a, callback)
local t
if callback == nil then
t = a
a = t.function_name
callback = t.callback
end
local run = function(keys, args) return enter(keys, args, callback) end
if t then
return R0.register_function({function_name = NAMES .. a, callback = run, flags = t.flags, description = t.description})
end
return R0.register_function(NAMES .. a, run)
end
return {register_function = register, log = function(...) return R0.log(...) end}
end)(__respite_global_redis(), __respite_global_redis);
