-- The core of the prelude (see script/prelude.rs): a function of the prefix P of the
-- tenant's keys in the database the script runs in (channels have the tenant's prefix C,
-- database 0's: pub/sub has no databases), the
-- real redis table R, the FAST commands and a state table whose `declared` maps each
-- declared key as the tenant wrote it to its name in Redis (so that a script passing
-- KEYS[i] to redis.call, the usual case, costs a table lookup, not a new string). It returns
-- the redis table scripts see, whose call/pcall put every key and channel argument into the
-- tenant's namespace (found by Redis' key specs, as Redis finds them) and take the prefix
-- back out of key names in replies (LMPOP, ZMPOP, XREAD, ...), and `declare`, which
-- hands a call's declared keys to the tenant as it wrote them.
-- @SPECS@ and @SHARED@ are filled in from respite's command table and config.
function(P, R, FAST, state)
local n = #P
local C = (P:gsub('@%d+:$', ':'))
local SHARED = @SHARED@
local function strip(k)
if type(k) == 'string' and k:find(P, 1, true) == 1 then return k:sub(n + 1) end
return k
end
local function key(k, channel)
local t = type(k)
if t == 'number' then k = tostring(k) elseif t ~= 'string' then return k end
local known = state.declared[k]
if known and not channel then return known end
local p = channel and C or P
if k:find(p, 1, true) == 1 then return k end
if not channel then
for i = 1, #SHARED do
if k:find(SHARED[i], 1, true) == 1 then return k end
end
end
return p .. k
end
-- The general path, built on a script's first call of a command not on the fast path:
-- any command, its keys found by its specs, key names taken out of its reply.
local function general()
local SPECS = @SPECS@
local parsed = {}
local function spec(name)
local s = parsed[name]
if s ~= nil then return s end
s = false
local at = SPECS:find('|' .. name .. '=', 1, true)
if at then
local from = at + #name + 2
local text = SPECS:sub(from, SPECS:find('|', from, true) - 1)
local flags, rest = text:match('^(%a*)/(.*)$')
s = {flags = flags}
for b, f in rest:gmatch('([^:;]+):([^;]+)') do
local e = {}
local idx = b:match('^i(%-?%d+)$')
if idx then e.i = tonumber(idx) else
local kw, from_ = b:match('^k([^,]+),(%-?%d+)$')
e.kw, e.from = kw, tonumber(from_)
end
local x, y, z = f:match('^%a(%-?%d+),(%-?%d+),(%-?%d+)$')
e.f, e.x, e.y, e.z = f:sub(1, 1), tonumber(x), tonumber(y), tonumber(z)
s[#s + 1] = e
end
end
parsed[name] = s
return s
end
local function lower(v)
if type(v) == 'string' then return v:lower() end
return ''
end
-- Marks, in a (argv 0 is a[1]), the arguments the key specs name, as Redis' getKeysUsingKeySpecs.
local function mark(s, a, argc, marks)
for _, e in ipairs(s) do
local first = e.i
if not first then
local from, to, step = e.from, argc - 1, 1
if from <= 0 then from, to, step = argc + from, 1, -1 end
for i = from, to, step do
if lower(a[i + 1]) == e.kw then first = i + 1 break end
end
end
if first then
local last, step
if e.f == 'r' then
step = e.y
if e.x >= 0 then last = first + e.x
elseif e.z == 0 then last = argc + e.x
else last = first + math.floor((argc - first) / e.z) + e.x end
else
step = e.z
local count = tonumber(a[first + e.x + 1])
if count and count >= 0 and count == math.floor(count) then
first = first + e.y
last = first + (count - 1) * step
end
end
if last and last >= first and last < argc and step > 0 then
for i = first, last, step do marks[i] = true end
end
end
end
if s.flags:find('s', 1, true) then
local i = 2
while i < argc do
local v = lower(a[i + 1])
if v == 'limit' then i = i + 2
elseif v == 'by' or v == 'get' then i = i + 1
elseif v == 'store' then marks[i + 1] = true i = i + 1 end
i = i + 1
end
end
end
return function(real, raise, ...)
local argc = select('#', ...)
local a = {...}
local s = false
if type(a[1]) == 'string' then
local name = a[1]:lower()
s = spec(name)
if not s and type(a[2]) == 'string' then s = spec(name .. ' ' .. a[2]:lower()) end
end
if not s then
local e = R.error_reply('NOPERM respite: ' .. tostring(a[1]) .. ' is not available in a tenant script (it would reach beyond the tenant)')
if raise then error(e) end
return e
end
local marks = {}
mark(s, a, argc, marks)
local channel = s.flags:find('c', 1, true)
for i in pairs(marks) do a[i + 1] = key(a[i + 1], channel) end
local r = real(unpack(a, 1, argc))
if type(r) == 'table' and s.flags ~= '' then
if s.flags:find('f', 1, true) then
r[1] = strip(r[1])
elseif s.flags:find('x', 1, true) then
if r.map then
local m = {}
for k, v in pairs(r.map) do m[strip(k)] = v end
r.map = m
else
for _, pair in ipairs(r) do if type(pair) == 'table' then pair[1] = strip(pair[1]) end end
end
end
end
return r
end
end
local general_path
local function slow(real, raise, ...)
general_path = general_path or general()
return general_path(real, raise, ...)
end
local call, pcall = R.call, R.pcall
return setmetatable({
call = function(...)
local name, k = ...
if FAST[name] and k ~= nil then return call(name, key(k), select(3, ...)) end
return slow(call, true, ...)
end,
pcall = function(...)
local name, k = ...
if FAST[name] and k ~= nil then return pcall(name, key(k), select(3, ...)) end
return slow(pcall, false, ...)
end,
}, {__index = R}), function(K)
-- The declared keys, as the tenant wrote them, in place; and the way back.
local declared = {}
for i = 1, #K do
local k = K[i]
local mine = strip(k)
declared[mine] = k
K[i] = mine
end
state.declared = declared
end
end
