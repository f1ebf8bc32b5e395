-- Apply one batch of run deltas atomically, each with the dedup marks of its entries.
--
-- ARGV[1]: msgpack {stats, fields, groups: [...]} (shape: processor/store/runs.py);
--   `fields` lists the batch's counter names once; groups refer to them by 1-based index.
-- ARGV[2]: unix time (s) the current dedup generation expires at,
-- ARGV[3]: entry retention seconds
-- ARGV[4]: the entries' JSON bodies concatenated, consecutive per group in the order of
--   its ids; a group carries {offset of its first body, length of each body}. One plain
--   argument: the script never decodes them, and the client encodes one argument.
--
-- Dedup: applied entry ids are fields of one hash per tenant and generation (a generation
-- lasts the dedup retention); an id counts as seen when it is in the current or the
-- previous generation, so it is remembered for at least the retention, and the whole
-- batch is checked with one HMGET per generation and marked with one HSET.
--
-- Redis does not roll a script back when a command fails half-way, so every group is
-- checked before anything is written for it: counters must stay within 64 bits (and
-- float counters finite), and none of its entry ids may have been applied before. A
-- group that fails a check is left untouched and reported back (the caller drops seen
-- ids and re-folds, or dead-letters an overflowing group); the writes that follow the
-- checks cannot fail. So a crash or a replay never leaves a partial or doubled state.
-- Counter increments are Lua numbers below 2^53 or strings beyond.
local payload = cmsgpack.unpack(ARGV[1])
local dedup_expire_at = ARGV[2]
local entry_ttl = tonumber(ARGV[3])
local blob = ARGV[4]
local fields = payload.fields
local results = {}
local applied = 0
-- below 2^63 with room for the rounding of doubles near it
local INT_LIMIT = 9.0e18

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

-- One read of the run hash: its metadata (user, ts0, ts1, agent: values 1-4) and the
-- current value of every counter the group increments (from 5 on, incr then fincr).
local function read_run(h, incr, fincr)
  local names = {'user', 'ts0', 'ts1', 'agent'}
  for i = 1, #incr, 2 do names[#names + 1] = fields[incr[i]] end
  for i = 1, #fincr, 2 do names[#names + 1] = fields[fincr[i]] end
  return redis.call('HMGET', h, unpack(names))
end

-- The first counter that the increments would take past 64 bits (or to inf/NaN), if any.
local function overflowing(current, incr, fincr)
  for i = 1, #incr, 2 do
    local v = (tonumber(current[4 + (i + 1) / 2]) or 0) + tonumber(incr[i + 1])
    if v >= INT_LIMIT or v <= -INT_LIMIT then return fields[incr[i]] end
  end
  local offset = 4 + #incr / 2
  for i = 1, #fincr, 2 do
    local v = (tonumber(current[offset + (i + 1) / 2]) or 0) + tonumber(fincr[i + 1])
    if v ~= v or v == math.huge or v == -math.huge then return fields[fincr[i]] end
  end
  return nil
end

-- ids already applied, per tenant (index into payload.seen: {current key, previous key})
local seen_ids = {}
local ids_of = {}
for _, grp in ipairs(payload.groups) do
  local t = grp[1]
  ids_of[t] = ids_of[t] or {}
  for _, id in ipairs(grp[2]) do ids_of[t][#ids_of[t] + 1] = id end
end
for t, ids in pairs(ids_of) do
  local found = {}
  for _, key in ipairs(payload.seen[t]) do
    for i = 1, #ids, 1000 do
      local last = math.min(i + 999, #ids)
      local hits = redis.call('HMGET', key, unpack(ids, i, last))
      for j = 1, last - i + 1 do
        if hits[j] then found[ids[i + j - 1]] = true end
      end
    end
  end
  seen_ids[t] = found
end
local to_mark = {}

for gi, grp in ipairs(payload.groups) do
  -- positional, in the order runs.py _group_payload writes them
  local tenant_index, ids, body_spans = grp[1], grp[2], grp[3]
  local h, h_kids, h_entries, run_id = grp[4], grp[5], grp[6], grp[7]
  local idx_all, idx_user, idx_agent = grp[8], grp[9], grp[10]
  local user, tenant, agent = grp[11], grp[12], grp[13]
  local incr, fincr, min_ts, max_ts, children = grp[14], grp[15], grp[16], grp[17], grp[18]

  local seen = {}
  local found = seen_ids[tenant_index]
  for _, id in ipairs(ids) do
    if found[id] then seen[#seen + 1] = id end
  end
  local meta = nil
  local too_big = nil
  if #seen == 0 then
    meta = read_run(h, incr, fincr)
    too_big = overflowing(meta, incr, fincr)
  end
  if #seen > 0 then
    results[#results + 1] = {gi - 1, 'seen', seen}
  elseif too_big then
    results[#results + 1] = {gi - 1, 'overflow', too_big}
  else
    local marks = to_mark[tenant_index] or {}
    to_mark[tenant_index] = marks
    for _, id in ipairs(ids) do
      marks[#marks + 1] = id
      marks[#marks + 1] = '1'
    end
    applied = applied + #ids
    local started = tonumber(meta[2])
    local updated = tonumber(meta[3])
    local set = {}
    if not meta[1] then
      set[#set + 1] = 'user'; set[#set + 1] = user
      set[#set + 1] = 'tenant'; set[#set + 1] = tenant
    end
    if agent ~= '' and not meta[4] then
      set[#set + 1] = 'agent'; set[#set + 1] = agent
    end
    local moved_start = started == nil or min_ts < started
    if moved_start then
      started = min_ts
      set[#set + 1] = 'ts0'; set[#set + 1] = string.format('%d', min_ts)
    end
    if updated == nil or max_ts > updated then
      set[#set + 1] = 'ts1'; set[#set + 1] = string.format('%d', max_ts)
    end
    if #set > 0 then
      redis.call('HSET', h, unpack(set))
    end
    for i = 1, #incr, 2 do
      redis.call('HINCRBY', h, fields[incr[i]], incr[i + 1])
    end
    for i = 1, #fincr, 2 do
      redis.call('HINCRBYFLOAT', h, fields[fincr[i]], fincr[i + 1])
    end
    if #children > 0 then
      call_chunked('SADD', h_kids, children)
    end
    -- raw entries, kept for the retention period after the run's last write
    local bodies = {}
    local pos = body_spans[1]
    for i, id in ipairs(ids) do
      local len = body_spans[i + 1]
      bodies[#bodies + 1] = id
      bodies[#bodies + 1] = string.sub(blob, pos, pos + len - 1)
      pos = pos + len
    end
    call_chunked('HSET', h_entries, bodies)
    redis.call('EXPIRE', h_entries, entry_ttl)
    -- run indexes scored by startedAt: touched only when the start moves (rarely)
    if moved_start then
      local score = string.format('%d', started)
      redis.call('ZADD', idx_all, score, run_id)
      redis.call('ZADD', idx_user, score, run_id)
      if idx_agent ~= '' then
        redis.call('ZADD', idx_agent, score, run_id)
      end
    end
  end
end

for t, marks in pairs(to_mark) do
  local key = payload.seen[t][1]
  call_chunked('HSET', key, marks)
  redis.call('EXPIREAT', key, dedup_expire_at)
end
if applied > 0 then
  redis.call('HINCRBY', payload.stats, 'applied', applied)
end

return cjson.encode(results)
