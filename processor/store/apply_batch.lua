-- Apply one batch of run deltas atomically, each with the dedup marks of its entries.
--
-- ARGV[1]: JSON {groups: [...]} (see processor/store/runs.py for the shape)
-- ARGV[2]: dedup TTL seconds, ARGV[3]: entry retention seconds
--
-- A group is applied only if none of its entry ids was seen before; otherwise it is left
-- untouched and reported back with the ids already seen, and the caller re-folds it
-- without them. So the state change and the dedup marks are written in one atomic step:
-- a crash leaves either both or neither, and a replay changes nothing.
-- Integers travel as strings: Lua numbers are doubles and money (pico-dollars) may
-- exceed 2^53 over a run's lifetime.
local payload = cjson.decode(ARGV[1])

-- unpack() is bounded by Lua's C stack: call in chunks
local function call_chunked(cmd, key, args, stride)
  local n = #args
  local step = 1000 * stride
  for i = 1, n, step do
    local last = math.min(i + step - 1, n)
    redis.call(cmd, key, unpack(args, i, last))
  end
end
local dedup_ttl = tonumber(ARGV[2])
local entry_ttl = tonumber(ARGV[3])
local conflicts = {}

for gi, g in ipairs(payload.groups) do
  local seen = {}
  local seen_prefix = g.seen
  for _, id in ipairs(g.ids) do
    if redis.call('EXISTS', seen_prefix .. id) == 1 then
      seen[#seen + 1] = id
    end
  end
  if #seen > 0 then
    conflicts[#conflicts + 1] = {gi - 1, seen}
  else
    for _, id in ipairs(g.ids) do
      redis.call('SET', seen_prefix .. id, '1', 'EX', dedup_ttl)
    end
    local h = g.run
    redis.call('HSETNX', h, 'user', g.user)
    redis.call('HSETNX', h, 'tenant', g.tenant)
    if g.agent ~= cjson.null then
      redis.call('HSETNX', h, 'agent', g.agent)
    end
    local incr = g.incr
    for i = 1, #incr, 2 do
      redis.call('HINCRBY', h, incr[i], incr[i + 1])
    end
    local fincr = g.fincr
    for i = 1, #fincr, 2 do
      redis.call('HINCRBYFLOAT', h, fincr[i], fincr[i + 1])
    end
    local started = tonumber(redis.call('HGET', h, 'ts0'))
    if started == nil or g.min_ts < started then
      redis.call('HSET', h, 'ts0', string.format('%d', g.min_ts))
      started = g.min_ts
    end
    local updated = tonumber(redis.call('HGET', h, 'ts1'))
    if updated == nil or g.max_ts > updated then
      redis.call('HSET', h, 'ts1', string.format('%d', g.max_ts))
    end
    if #g.children > 0 then
      call_chunked('SADD', g.run_children, g.children, 1)
    end
    -- raw entries, kept for the retention period after the run's last write
    local order_args = {}
    local entry_args = {}
    for _, e in ipairs(g.entries) do
      order_args[#order_args + 1] = e[2]
      order_args[#order_args + 1] = e[1]
      entry_args[#entry_args + 1] = e[1]
      entry_args[#entry_args + 1] = e[3]
    end
    call_chunked('ZADD', g.run_order, order_args, 2)
    call_chunked('HSET', g.run_entries, entry_args, 2)
    redis.call('EXPIRE', g.run_order, entry_ttl)
    redis.call('EXPIRE', g.run_entries, entry_ttl)
    -- run indexes scored by startedAt; LT keeps the earliest start
    local score = string.format('%d', started)
    redis.call('ZADD', g.idx_all, 'LT', score, g.run_id)
    redis.call('ZADD', g.idx_user, 'LT', score, g.run_id)
    if g.idx_agent ~= cjson.null then
      redis.call('ZADD', g.idx_agent, 'LT', score, g.run_id)
    end
  end
end

return cjson.encode(conflicts)
