-- Apply one batch of run deltas atomically, each with the dedup marks of its entries.
--
-- ARGV[1]: msgpack {stats, fields, groups: [...]} (shape: processor/store/runs.py);
-- `fields` lists the batch's counter names once; groups refer to them by 1-based index.
-- ARGV[2]: dedup TTL seconds, ARGV[3]: entry retention seconds
-- ARGV[4..]: the entries' JSON bodies, referenced by index from the groups; passed as
-- plain arguments so the script never decodes them (decoding them doubled its cost).
--
-- A group is applied only if none of its entry ids was seen before; otherwise it is left
-- untouched and reported back with the ids already seen, and the caller re-folds it
-- without them. So the state change and the dedup marks are written in one atomic step:
-- a crash leaves either both or neither, and a replay changes nothing.
-- Counter increments travel as strings: Lua numbers are doubles.
-- Key suffixes ':children' and ':entries' mirror processor/store/keys.py.
local payload = cmsgpack.unpack(ARGV[1])
local dedup_ttl = tonumber(ARGV[2])
local entry_ttl = tonumber(ARGV[3])
local conflicts = {}
local applied = 0
local fields = payload.fields

-- unpack() is bounded by Lua's C stack: call in chunks of at most 1000 items
local function call_chunked(cmd, key, args)
  for i = 1, #args, 1000 do
    if key then
      redis.call(cmd, key, unpack(args, i, math.min(i + 999, #args)))
    else
      redis.call(cmd, unpack(args, i, math.min(i + 999, #args)))
    end
  end
end

for gi, grp in ipairs(payload.groups) do
  -- positional fields, in the order runs.py _group_payload writes them
  local g = {
    seen = grp[1], ids = grp[2], body_at = grp[3], run = grp[4], run_id = grp[5],
    idx_all = grp[6], idx_user = grp[7], idx_agent = grp[8], user = grp[9],
    tenant = grp[10], agent = grp[11], incr = grp[12], fincr = grp[13],
    min_ts = grp[14], max_ts = grp[15], children = grp[16],
  }
  -- Claim every id with SET NX; on any clash, release this group's claims untouched.
  local seen = {}
  local claimed = {}
  local seen_prefix = g.seen
  for _, id in ipairs(g.ids) do
    if redis.call('SET', seen_prefix .. id, '1', 'NX', 'EX', dedup_ttl) then
      claimed[#claimed + 1] = seen_prefix .. id
    else
      seen[#seen + 1] = id
    end
  end
  if #seen > 0 then
    if #claimed > 0 then
      call_chunked('DEL', false, claimed)
    end
    conflicts[#conflicts + 1] = {gi - 1, seen}
  else
    applied = applied + #g.ids
    local h = g.run
    local meta = redis.call('HMGET', h, 'user', 'ts0', 'ts1', 'agent')
    local new_run = not meta[1]
    local started = tonumber(meta[2])
    local updated = tonumber(meta[3])
    local set = {}
    if new_run then
      set[#set + 1] = 'user'; set[#set + 1] = g.user
      set[#set + 1] = 'tenant'; set[#set + 1] = g.tenant
    end
    if g.agent ~= '' and not meta[4] then
      set[#set + 1] = 'agent'; set[#set + 1] = g.agent
    end
    local moved_start = started == nil or g.min_ts < started
    if moved_start then
      started = g.min_ts
      set[#set + 1] = 'ts0'; set[#set + 1] = string.format('%d', g.min_ts)
    end
    if updated == nil or g.max_ts > updated then
      set[#set + 1] = 'ts1'; set[#set + 1] = string.format('%d', g.max_ts)
    end
    if #set > 0 then
      redis.call('HSET', h, unpack(set))
    end
    local incr = g.incr
    for i = 1, #incr, 2 do
      redis.call('HINCRBY', h, fields[incr[i]], incr[i + 1])
    end
    local fincr = g.fincr
    for i = 1, #fincr, 2 do
      redis.call('HINCRBYFLOAT', h, fields[fincr[i]], fincr[i + 1])
    end
    if #g.children > 0 then
      call_chunked('SADD', h .. ':children', g.children)
    end
    -- raw entries, kept for the retention period after the run's last write
    -- the group's bodies are consecutive in ARGV, in the order of its ids
    local bodies = {}
    local base = g.body_at - 1
    for i, id in ipairs(g.ids) do
      bodies[#bodies + 1] = id
      bodies[#bodies + 1] = ARGV[base + i]
    end
    call_chunked('HSET', h .. ':entries', bodies)
    redis.call('EXPIRE', h .. ':entries', entry_ttl)
    -- run indexes scored by startedAt: touched only when the start moves (rarely)
    if moved_start then
      local score = string.format('%d', started)
      redis.call('ZADD', g.idx_all, score, g.run_id)
      redis.call('ZADD', g.idx_user, score, g.run_id)
      if g.idx_agent ~= '' then
        redis.call('ZADD', g.idx_agent, score, g.run_id)
      end
    end
  end
end

if applied > 0 then
  redis.call('HINCRBY', payload.stats, 'applied', applied)
end

return cjson.encode(conflicts)
