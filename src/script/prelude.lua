-- The prelude respite puts in front of every tenant script run with EVAL/EVALSHA (see
-- script/prelude.rs).
--
-- It is joined into ONE line (whole-line comments dropped) and the script's own first line
-- follows it on the same line, so Redis' error messages keep the script's line numbers.
-- It shadows KEYS, ARGV and redis with locals:
--   KEYS   the declared keys as the tenant wrote them (respite sent them prefixed);
--   ARGV   the tenant's arguments (respite's two arguments at the end taken off: the
--          tenant's prefix, and "c" or "u");
--   redis  the table core.lua makes.
-- It is not the wall (a script can reach the real redis table through loadstring): Redis'
-- own ACL user for the tenant is. Mode "c" makes the prelude refuse to run the script
-- unless Redis confines it to a user that cannot touch respite's own keys.
-- @FAST@ (per script) names the commands the script spells out whose only key is their
-- first argument: those take a path with no table, parsing or copying.
local KEYS, ARGV, redis = (function(K, A, R, FAST)
local last = #A
local P, H = A[last - 1], A[last]
if H ~= 'c' and H ~= 'u' then
error(R.error_reply('ERR respite: this script runs only through respite'))
end
A[last] = nil
A[last - 1] = nil
if H == 'c' and R.acl_check_cmd('get', 'respite:confinement-check') then
error(R.error_reply('ERR respite: refusing to run a tenant script as an unconfined Redis user'))
end
local shadow, declare = (@CORE@)(P, R, FAST, {})
declare(K)
return K, A, shadow
end)(KEYS, ARGV, redis, @FAST@);
