"""Lua scripts of the Redis broker: each is one atomic round trip.

Keys (``P`` = broker prefix, ``N`` = node id):
  P:node:N     this node's lease and heartbeat (value: instance token, PX = presence ttl)
  P:nodes      set of node ids that may hold state (pruned when their lease is gone)
  P:seq        counter seeding node id allocation
  P:presence   hash user -> the user's connections, oldest first, one per line:
               "N|conn_id|connected_at|hex(device)|[tags]" (``--max-connections-per-user``
               of them at most; one unless it is above 1)
  P:users:N    set of users with a connection on node N (online count, cleanup)
  P:conns:N    connections on node N (the connection count)
  P:tag:T      set of node ids with members of tag T (tag routing)
  P:tags:N     set of tags node N registered in P:tag:* (cleanup)
  P:dist:N     hash tag -> "members|created" of node N (distribution)
  P:held:U     set of node ids holding unacked entries of offline user U (PX = hold ttl)
  P:inbox:U    hash sid -> kept entry of user U (``inbox.pack_value``); field "-" holds
               the payload bytes of all of them (the inbox bound)
  P:inbox_due  sorted set "sid:user" by expiry (unix ms): what the sweep looks at
  P:tagbox:T   list of kept tag pushes of tag T (``inbox.pack_tag_push``), trimmed
  P:seen:U     when user U last left (unix seconds; PX = inbox ttl)
A presence entry counts only while its node's lease exists, so a dead node's users
drop out when the lease expires even before anyone cleans up after it.
"""

# A user's presence entries (a Lua prelude shared by the scripts that change them).
_ENTRIES = """
local function entries(v)
  local out = {}
  if v then for e in string.gmatch(v, '[^\\n]+') do out[#out + 1] = e end end
  return out
end
local function store(p, u, list)
  if #list == 0 then redis.call('HDEL', p..':presence', u)
  else redis.call('HSET', p..':presence', u, table.concat(list, '\\n')) end
end
local function node_of(e) return string.match(e, '^(%d+)|') end
local function live(alive, p, id)
  if alive[id] == nil then alive[id] = redis.call('EXISTS', p..':node:'..id) == 1 end
  return alive[id]
end
local function without(list, keep)
  local left = {}
  for _, e in ipairs(list) do if keep(e) then left[#left + 1] = e end end
  return left
end
"""

# ARGV: prefix, token, ttl_ms, requested id (-1: any free id)
CLAIM = """
local p, token, ttl, want = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
if want >= 0 then
  redis.call('SET', p..':node:'..want, token, 'PX', ttl)
  redis.call('SADD', p..':nodes', want)
  return want
end
local start = redis.call('INCR', p..':seq')
for i = 0, 1023 do
  local id = (start + i) % 1024
  if redis.call('SET', p..':node:'..id, token, 'NX', 'PX', ttl) then
    redis.call('SADD', p..':nodes', id)
    return id
  end
end
return -1
"""

# Drop the state of node ARGV[2] (ARGV[2] = '*': of every node whose lease is gone).
PURGE = (
    _ENTRIES
    + """
local p = ARGV[1]
local function purge(id)
  local users = p..':users:'..id
  for _, u in ipairs(redis.call('SMEMBERS', users)) do
    local list = entries(redis.call('HGET', p..':presence', u))
    local left = without(list, function(e) return node_of(e) ~= id end)
    if #left ~= #list then store(p, u, left) end
  end
  for _, t in ipairs(redis.call('SMEMBERS', p..':tags:'..id)) do
    redis.call('SREM', p..':tag:'..t, id)
  end
  redis.call('DEL', users, p..':tags:'..id, p..':dist:'..id, p..':conns:'..id)
end
if ARGV[2] ~= '*' then purge(ARGV[2]) return 1 end
local n = 0
for _, id in ipairs(redis.call('SMEMBERS', p..':nodes')) do
  if redis.call('EXISTS', p..':node:'..id) == 0 then
    purge(id)
    redis.call('SREM', p..':nodes', id)
    n = n + 1
  end
end
return n
"""
)

# ARGV: prefix, id, token, ttl_ms -> 1 refreshed, 2 lease was gone (re-created), 0 taken
BEAT = """
local key = ARGV[1]..':node:'..ARGV[2]
local v = redis.call('GET', key)
if v == ARGV[3] then redis.call('PEXPIRE', key, ARGV[4]) return 1 end
if v then return 0 end
redis.call('SET', key, ARGV[3], 'PX', ARGV[4])
redis.call('SADD', ARGV[1]..':nodes', ARGV[2])
return 2
"""

# What a connecting user is owed (a Lua function, shared by REGISTER and OWED):
# their kept entries (now tracked by the reading node: none expires before the
# horizon), when they were last seen ('' if not within the ttl) and, if seen, the
# kept pushes of the tags ARGV[first..]. Returns {{sid, value, ...}, seen, {push, ...}}.
_OWED = """
local function owed(p, u, horizon, first)
  local flat = redis.call('HGETALL', p..':inbox:'..u)
  local kept = {}
  for i = 1, #flat, 2 do
    if flat[i] ~= '-' then
      redis.call('ZADD', p..':inbox_due', 'GT', horizon, flat[i]..':'..u)
      kept[#kept + 1] = flat[i]
      kept[#kept + 1] = flat[i + 1]
    end
  end
  local seen = redis.call('GET', p..':seen:'..u)
  local pushes = {}
  if seen then
    for i = first, #ARGV do
      for _, v in ipairs(redis.call('LRANGE', p..':tagbox:'..ARGV[i], 0, -1)) do
        pushes[#pushes + 1] = v
      end
    end
  end
  return {kept, seen or '', pushes}
end
"""

# ARGV: prefix, id, user, value, horizon_ms, max connections, hex(device), tags...
# -> {the entries it replaced (the same named device's, then the oldest while the
# user has max), the nodes holding unacked entries of the user (their markers are
# dropped when max is 1: that login takes all), what the user is owed (``_OWED``,
# for the user's only connection; read in the same step, so nothing kept before the
# login is missed and nothing kept after it is owed twice), the user's connections}
REGISTER = (
    _ENTRIES
    + _OWED
    + """
local p, me, u, max, dev = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[6]), ARGV[7]
local kept, dropped, alive = {}, {}, {}
for _, e in ipairs(entries(redis.call('HGET', p..':presence', u))) do
  local id, edev = string.match(e, '^(%d+)|[^|]*|[^|]*|([^|]*)|')
  if live(alive, p, id) then
    if dev ~= '' and edev == dev then dropped[#dropped + 1] = e else kept[#kept + 1] = e end
  end
end
while #kept >= max do dropped[#dropped + 1] = table.remove(kept, 1) end
kept[#kept + 1] = ARGV[4]
store(p, u, kept)
redis.call('SADD', p..':users:'..me, u)
for i = 8, #ARGV do
  redis.call('SADD', p..':tag:'..ARGV[i], me)
  redis.call('SADD', p..':tags:'..me, ARGV[i])
end
local held = redis.call('SMEMBERS', p..':held:'..u)
if #held > 0 and max == 1 then redis.call('DEL', p..':held:'..u) end
local owes = {{}, '', {}}
if #kept == 1 then owes = owed(p, u, ARGV[5], 8) end
return {dropped, held, owes, #kept}
"""
)

# ARGV: prefix, id, user, login ("N|conn_id|"), now (unix s), seen ttl_ms: drop the
# login's entry (whatever its tags: a retag rewrites them; nothing if a newer login
# replaced it); record when the user was last seen (stored tag pushes).
UNREGISTER = (
    _ENTRIES
    + """
local p, me, u, login = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local list = entries(redis.call('HGET', p..':presence', u))
local left = without(list, function(e) return string.sub(e, 1, #login) ~= login end)
if #left ~= #list then store(p, u, left) end
if #without(left, function(e) return node_of(e) == me end) == 0 then
  redis.call('SREM', p..':users:'..me, u)
end
redis.call('SET', p..':seen:'..u, ARGV[5], 'PX', ARGV[6])
return 1
"""
)

# ARGV: prefix, user, login ("N|conn_id|"), value: the login's new tags; nothing
# when the entry is gone (a newer login replaced it) -> 1 updated, 0 not
RETAG = (
    _ENTRIES
    + """
local p, u, login = ARGV[1], ARGV[2], ARGV[3]
local list = entries(redis.call('HGET', p..':presence', u))
for i, e in ipairs(list) do
  if string.sub(e, 1, #login) == login then
    list[i] = ARGV[4]
    store(p, u, list)
    return 1
  end
end
return 0
"""
)

# ARGV: prefix, users... -> each user's entries on live nodes (nil when none)
LOCATE = (
    _ENTRIES
    + """
local p, alive, out = ARGV[1], {}, {}
for i = 2, #ARGV do
  local list = entries(redis.call('HGET', p..':presence', ARGV[i]))
  local left = without(list, function(e) return live(alive, p, node_of(e)) end)
  out[i - 1] = #left > 0 and table.concat(left, '\\n') or false
end
return out
"""
)

# ARGV: prefix, max connections per user -> {users, connections} on live nodes: a
# user with connections on several nodes (max above 1) counts once
COUNT = """
local p, users, conns, sets = ARGV[1], 0, 0, {}
for _, id in ipairs(redis.call('SMEMBERS', p..':nodes')) do
  if redis.call('EXISTS', p..':node:'..id) == 1 then
    users = users + redis.call('SCARD', p..':users:'..id)
    conns = conns + tonumber(redis.call('GET', p..':conns:'..id) or '0')
    sets[#sets + 1] = p..':users:'..id
  end
end
if ARGV[2] == '1' then return {users, users} end
if #sets > 0 then users = redis.call('SUNIONSTORE', p..':count', unpack(sets)) end
redis.call('DEL', p..':count')
return {users, conns}
"""

# ARGV: prefix -> flat [tag, "members|created", ...] of every live node
DISTRIBUTION = """
local p, out = ARGV[1], {}
for _, id in ipairs(redis.call('SMEMBERS', p..':nodes')) do
  if redis.call('EXISTS', p..':node:'..id) == 1 then
    for _, x in ipairs(redis.call('HGETALL', p..':dist:'..id)) do out[#out + 1] = x end
  end
end
return out
"""

# ARGV: prefix -> flat [id, users, connections, ...] of every live node
NODES = """
local p, out = ARGV[1], {}
for _, id in ipairs(redis.call('SMEMBERS', p..':nodes')) do
  if redis.call('EXISTS', p..':node:'..id) == 1 then
    out[#out + 1] = tonumber(id)
    out[#out + 1] = redis.call('SCARD', p..':users:'..id)
    out[#out + 1] = tonumber(redis.call('GET', p..':conns:'..id) or '0')
  end
end
return out
"""

# After an outage. ARGV: prefix, id, max connections per user, first chunk ('1':
# forget what the node had registered), then (user, value, connected_at) triples,
# one per connection. A connection goes in by its age beside the user's entries on
# live nodes; an entry of the same named device that is newer, or the cap, may
# leave it out. Returns user, conn_id pairs of connections left out (to close).
RESYNC = (
    _ENTRIES
    + """
local p, me, max, lost, alive = ARGV[1], ARGV[2], tonumber(ARGV[3]), {}, {}
local function at_of(e) return tonumber(string.match(e, '^%d+|[^|]*|([^|]*)|')) end
if ARGV[4] == '1' then
  for _, u in ipairs(redis.call('SMEMBERS', p..':users:'..me)) do
    local list = entries(redis.call('HGET', p..':presence', u))
    local left = without(list, function(e) return node_of(e) ~= me end)
    if #left ~= #list then store(p, u, left) end
  end
  redis.call('DEL', p..':users:'..me)
end
for i = 5, #ARGV, 3 do
  local u, v, ts = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local login, dev = string.match(v, '^(%d+|[^|]*|)[^|]*|([^|]*)|')
  local out = false
  local list = without(entries(redis.call('HGET', p..':presence', u)), function(e)
    if string.sub(e, 1, #login) == login or not live(alive, p, node_of(e)) then return false end
    local edev = string.match(e, '^%d+|[^|]*|[^|]*|([^|]*)|')
    if dev == '' or edev ~= dev then return true end
    if at_of(e) > ts then out = true return true end  -- a newer login of that device
    return false
  end)
  if not out then
    local pos = #list + 1
    for j, e in ipairs(list) do if at_of(e) > ts then pos = j break end end
    table.insert(list, pos, v)
    while #list > max do
      if table.remove(list, 1) == v then out = true end
    end
  end
  store(p, u, list)
  if out then
    lost[#lost + 1] = u
    lost[#lost + 1] = string.match(v, '^%d+|([^|]*)|')
  else
    redis.call('SADD', p..':users:'..me, u)
  end
end
return lost
"""
)

# Keep one entry for several users. ARGV: prefix, sid, expires_ms, bounded (1/0),
# max messages, max bytes, value, users... Returns the users it was kept for.
KEEP = """
local p, sid, expires, bounded = ARGV[1], ARGV[2], ARGV[3], ARGV[4] == '1'
local max_n, max_b, value = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local size = #value - 18
local kept = {}
for i = 8, #ARGV do
  local u = ARGV[i]
  local key = p..':inbox:'..u
  local room = true
  if bounded then
    local n = redis.call('HLEN', key)
    if n > 0 then n = n - 1 end
    local b = tonumber(redis.call('HGET', key, '-') or '0')
    room = n < max_n and b + size <= max_b
  end
  if room then
    if redis.call('HSETNX', key, sid, value) == 1 then
      redis.call('HINCRBY', key, '-', size)
      redis.call('ZADD', p..':inbox_due', expires, sid..':'..u)
    end
    kept[#kept + 1] = u
  end
end
return kept
"""

# Drop one kept entry (the inbox and its bytes; the due set is the caller's):
# its value, or nil. Shared by FORGET and SWEEP.
_DROP = """
local function drop(p, u, sid)
  local key = p..':inbox:'..u
  local v = redis.call('HGET', key, sid)
  if v then
    redis.call('HDEL', key, sid)
    redis.call('HINCRBY', key, '-', 18 - #v)
    if redis.call('HLEN', key) <= 1 then redis.call('DEL', key) end
  end
  return v
end
"""

# Drop entries. ARGV: prefix, then user, sid pairs.
FORGET = (
    _DROP
    + """
local p = ARGV[1]
for i = 2, #ARGV, 2 do
  local u, sid = ARGV[i], ARGV[i + 1]
  drop(p, u, sid)
  redis.call('ZREM', p..':inbox_due', sid..':'..u)
end
return 0
"""
)

# What a connecting user is owed, when REGISTER could not tell (it failed during an
# outage). ARGV: prefix, user, horizon_ms, tags...
OWED = (
    _OWED
    + """
return owed(ARGV[1], ARGV[2], ARGV[3], 4)
"""
)

# Claim expired entries of offline users. ARGV: prefix, now_ms, limit, recheck_ms.
# An online user's entry is its node's to expire: looked at again after recheck_ms.
# Returns user, sid, value triples.
SWEEP = (
    _DROP
    + """
local p, now, limit, recheck = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local due = p..':inbox_due'
local out = {}
for _, m in ipairs(redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, limit)) do
  local at = string.find(m, ':', 1, true)
  local sid, u = string.sub(m, 1, at - 1), string.sub(m, at + 1)
  if redis.call('HEXISTS', p..':presence', u) == 1 then
    redis.call('ZADD', due, tonumber(now) + recheck, m)
  else
    redis.call('ZREM', due, m)
    local v = drop(p, u, sid)
    if v then
      out[#out + 1] = u
      out[#out + 1] = sid
      out[#out + 1] = v
    end
  end
end
return out
"""
)
