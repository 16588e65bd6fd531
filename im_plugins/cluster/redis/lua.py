"""Lua scripts of the Redis broker: each is one atomic round trip.

Keys (``P`` = broker prefix, ``N`` = node id):
  P:node:N     this node's lease and heartbeat (value: instance token, PX = presence ttl)
  P:nodes      set of node ids that may hold state (pruned when their lease is gone)
  P:seq        counter seeding node id allocation
  P:presence   hash user -> "N|conn_id|connected_at|[tags]"
  P:users:N    set of users registered by node N (online count, cleanup)
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
PURGE = """
local p = ARGV[1]
local function purge(id)
  local users = p..':users:'..id
  for _, u in ipairs(redis.call('SMEMBERS', users)) do
    local v = redis.call('HGET', p..':presence', u)
    if v and string.sub(v, 1, #id + 1) == id..'|' then redis.call('HDEL', p..':presence', u) end
  end
  for _, t in ipairs(redis.call('SMEMBERS', p..':tags:'..id)) do
    redis.call('SREM', p..':tag:'..t, id)
  end
  redis.call('DEL', users, p..':tags:'..id, p..':dist:'..id)
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

# ARGV: prefix, id, user, value, horizon_ms, tags... -> {the entry it replaced (or
# nil), the nodes holding unacked entries of the user (their markers are dropped),
# what the user is owed (``_OWED``; read in the same step, so nothing kept before
# the login is missed and nothing kept after it is owed twice)}
REGISTER = _OWED + """
local p, me, u = ARGV[1], ARGV[2], ARGV[3]
local old = redis.call('HGET', p..':presence', u)
redis.call('HSET', p..':presence', u, ARGV[4])
redis.call('SADD', p..':users:'..me, u)
for i = 6, #ARGV do
  redis.call('SADD', p..':tag:'..ARGV[i], me)
  redis.call('SADD', p..':tags:'..me, ARGV[i])
end
local held = redis.call('SMEMBERS', p..':held:'..u)
if #held > 0 then redis.call('DEL', p..':held:'..u) end
return {old or false, held, owed(p, u, ARGV[5], 6)}
"""

# ARGV: prefix, id, user, login ("N|conn_id|"), now (unix s), seen ttl_ms: drop the
# entry only if it is still this login's (whatever its tags: a retag rewrites them);
# record when the user was last seen (stored tag pushes).
UNREGISTER = """
local p, u, login = ARGV[1], ARGV[3], ARGV[4]
local v = redis.call('HGET', p..':presence', u)
if v and string.sub(v, 1, #login) == login then redis.call('HDEL', p..':presence', u) end
redis.call('SREM', p..':users:'..ARGV[2], u)
redis.call('SET', p..':seen:'..u, ARGV[5], 'PX', ARGV[6])
return 1
"""

# ARGV: prefix, user, login ("N|conn_id|"), value: the login's new tags; nothing
# when the entry is gone or belongs to another login -> 1 updated, 0 not
RETAG = """
local p, u, login = ARGV[1], ARGV[2], ARGV[3]
local v = redis.call('HGET', p..':presence', u)
if v and string.sub(v, 1, #login) == login then
  redis.call('HSET', p..':presence', u, ARGV[4])
  return 1
end
return 0
"""

# ARGV: prefix, users... -> entries on live nodes (nil for offline users)
LOCATE = """
local p, alive, out = ARGV[1], {}, {}
for i = 2, #ARGV do
  local v = redis.call('HGET', p..':presence', ARGV[i])
  if v then
    local id = string.match(v, '^(%d+)|')
    if alive[id] == nil then alive[id] = redis.call('EXISTS', p..':node:'..id) == 1 end
    if not alive[id] then v = false end
  end
  out[i - 1] = v or false
end
return out
"""

# ARGV: prefix -> users registered by live nodes
COUNT = """
local p, n = ARGV[1], 0
for _, id in ipairs(redis.call('SMEMBERS', p..':nodes')) do
  if redis.call('EXISTS', p..':node:'..id) == 1 then
    n = n + redis.call('SCARD', p..':users:'..id)
  end
end
return n
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

# After an outage. ARGV: prefix, id, first chunk ('1': forget what the node had
# registered), then (user, value, connected_at) triples. Returns users whose entry
# now belongs to a newer login on another live node.
RESYNC = """
local p, me, lost = ARGV[1], ARGV[2], {}
if ARGV[3] == '1' then
  for _, u in ipairs(redis.call('SMEMBERS', p..':users:'..me)) do
    local v = redis.call('HGET', p..':presence', u)
    if v and string.sub(v, 1, #me + 1) == me..'|' then redis.call('HDEL', p..':presence', u) end
  end
  redis.call('DEL', p..':users:'..me)
end
for i = 4, #ARGV, 3 do
  local u, v, ts = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local old, keep = redis.call('HGET', p..':presence', u), true
  if old and old ~= v then
    local id, ots = string.match(old, '^(%d+)|[^|]*|([^|]*)|')
    if id ~= me and tonumber(ots) > ts and redis.call('EXISTS', p..':node:'..id) == 1 then
      keep = false
    end
  end
  if keep then
    redis.call('HSET', p..':presence', u, v)
    redis.call('SADD', p..':users:'..me, u)
  else
    lost[#lost + 1] = u
  end
end
return lost
"""

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
FORGET = _DROP + """
local p = ARGV[1]
for i = 2, #ARGV, 2 do
  local u, sid = ARGV[i], ARGV[i + 1]
  drop(p, u, sid)
  redis.call('ZREM', p..':inbox_due', sid..':'..u)
end
return 0
"""

# What a connecting user is owed, when REGISTER could not tell (it failed during an
# outage). ARGV: prefix, user, horizon_ms, tags...
OWED = _OWED + """
return owed(ARGV[1], ARGV[2], ARGV[3], 4)
"""

# Claim expired entries of offline users. ARGV: prefix, now_ms, limit, recheck_ms.
# An online user's entry is its node's to expire: looked at again after recheck_ms.
# Returns user, sid, value triples.
SWEEP = _DROP + """
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
