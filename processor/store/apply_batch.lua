-- Apply one batch of run deltas atomically, with the dedup marks of its entries, the
-- users' windows, the alerts it fires, invoice adjustments (and their outbox messages)
-- and the next offsets of the partitions it came from.
--
-- ARGV[1]: msgpack {fields, seen, groups, users, trees?} (shape: processor/store/runs.py);
--   `fields` lists the call's counter names once and groups and users refer to them by
--   1-based index; `seen` holds, per tenant, the dedup hash key without its generation;
--   `users` holds what the call's groups add to each user's windows, summed per user, with
--   the alert checks of those windows; `trees` (only with run rules) the run-tree keys
--   of each tenant.
-- ARGV[2]: msgpack control {stats, token, dedup_ttl, entry_ttl, offsets, write_offsets,
--   outbox, alerts_outbox, alert_ttl_ms, now_ms, and with run rules run_rules,
--   run_rules_tag, tree_depth, tree_children, tree_cap}: `token` marks this batch's dedup
--   entries (so a retry after a lost reply can tell its own earlier writes from real
--   duplicates); `offsets` = {key, {{field, expected, target}, ...}} or absent.
-- ARGV[3]: every entry body of the call concatenated, one blob; a group carries {offset
--   of its first body, length of each body}. One plain argument: the script never
--   decodes them.
--
-- Order: every check first (offsets, dedup, counter ranges, which months are invoiced,
-- user alerts, run-tree alerts in section 5b), then the writes. Redis does not roll a
-- script back when a command fails half-way, so nothing may fail after the first write:
-- all reads and writes go in chunks well below Lua's unpack limit (LUAI_MAXCSTACK, 8000),
-- and counters are checked to stay within 64 bits. A call is all or nothing: when any check fails, nothing is written and every
-- problem is reported back (the caller resolves them and sends the rest again), because
-- the users' increments are summed over all the call's groups. Offsets are written only
-- by a call that applied, so a batch moves its partitions on only once all of it is in.
local groups_payload = cmsgpack.unpack(ARGV[1])
local control = cmsgpack.unpack(ARGV[2])
local blob = ARGV[3]
local fields = groups_payload.fields
local groups = groups_payload.groups
local token = control.token
local CHUNK = 512
-- below 2^63 with room for the rounding of doubles near it
local INT_LIMIT = 9.0e18

-- redis.call(cmd, key, args[i..j]) in chunks of at most CHUNK items (pairs kept whole)
local function call_chunked(cmd, key, args)
  for i = 1, #args, CHUNK do
    redis.call(cmd, key, unpack(args, i, math.min(i + CHUNK - 1, #args)))
  end
end

-- HMGET key names..., in chunks; returns the values in order (false for missing)
local function hmget_chunked(key, names)
  local out = {}
  for i = 1, #names, CHUNK do
    local last = math.min(i + CHUNK - 1, #names)
    local got = redis.call('HMGET', key, unpack(names, i, last))
    for j = 1, last - i + 1 do out[i + j - 1] = got[j] end
  end
  return out
end

local function fmt_int(x) return string.format('%d', x) end

-- pico-dollars as a plain decimal USD string (exact below 2^53 pico, about 9,007 USD)
local function fmt_usd(pico)
  local whole = math.floor(pico / 1e12)
  local frac = pico - whole * 1e12
  if frac == 0 then return fmt_int(whole) end
  local text = string.format('%012d', frac):gsub('0+$', '')
  return fmt_int(whole) .. '.' .. text
end

-- failed / total as a decimal string, half-even to 6 places
local function fmt_rate(failed, total)
  local scaled = failed * 1e6
  local q = math.floor(scaled / total)
  local r = scaled - q * total
  if 2 * r > total or (2 * r == total and q % 2 == 1) then q = q + 1 end
  local whole = math.floor(q / 1e6)
  local frac = q - whole * 1e6
  if frac == 0 then return fmt_int(whole) end
  return fmt_int(whole) .. '.' .. (string.format('%06d', frac):gsub('0+$', ''))
end

-- whether a check holds on (cost, tokens, ok, failed) totals
local function holds(c, cost, tokens, ok, failed)
  local metric, threshold = c[1], tonumber(c[3])
  if metric == 'c' then return cost >= threshold end
  if metric == 't' then return tokens >= threshold end
  local total = ok + failed
  return total >= c[5] and total > 0 and failed * c[4] >= threshold * total
end

-- Run-tree alerts (section 5b): every run a call touches, and every ancestor of one, is a
-- subject whose tree (itself and every run reachable through sub-agent links, each once,
-- cycles cut, at most `tree_depth` levels down, `tree_children` children per run) is
-- evaluated against the run rules in the state right after the call, read before the
-- call writes anything (its own increments and links added virtually). A level that holds
-- and has not fired yet is attributed by replaying the call's entries in batch order on
-- the state before it, so `entryId` and `observed` are exact whatever order parents and
-- children arrive in and whichever workers apply them.
local function part(s) return (string.gsub(string.gsub(s, '%%', '%%25'), ':', '%%3A')) end
local function lp(s) return #s .. ':' .. s end
-- processor.domain.alerts.alert_id, for a run's lifetime window (start 0)
local function run_alert_id(tenant, rule, run, level)
  return 'alt_' .. string.sub(redis.sha1hex(lp('alert') .. lp(tenant) .. lp(rule) .. lp('run')
    .. lp(run) .. lp('run') .. lp('0') .. lp(level)), 1, 32)
end

local function run_tree_alerts(groups, fields, trees, control, now_ms)
  local rules = control.run_rules
  local depth, limit, cap = control.tree_depth, control.tree_children, control.tree_cap
  local firing, cut, done = {}, {0, 0}, {}
  local by_tenant = {}
  for _, grp in ipairs(groups) do
    local list = by_tenant[grp[1]] or {}
    by_tenant[grp[1]] = list
    list[#list + 1] = grp
  end
  for t, tgroups in pairs(by_tenant) do
    local tr = trees[t]
    local run_p, kids_p, parents_p, tenant = tr[1], tr[2], tr[3], tr[4]
    -- what the call adds: per run its totals, its user and first timestamp, its links
    local inc, call_user, call_ts0, call_kids, call_parents, touched = {}, {}, {}, {}, {}, {}
    for _, grp in ipairs(tgroups) do
      local run, incr = grp[8], grp[16]
      local a = inc[run] or {0, 0, 0, 0}
      inc[run] = a
      for i = 1, #incr, 2 do
        local name = fields[incr[i]]
        if name == 'ct' then a[1] = a[1] + tonumber(incr[i + 1])
        elseif name == 'tt' then a[2] = a[2] + tonumber(incr[i + 1])
        elseif name == 'to' then a[3] = a[3] + tonumber(incr[i + 1])
        elseif name == 'tf' then a[4] = a[4] + tonumber(incr[i + 1]) end
      end
      if not call_user[run] then touched[#touched + 1] = run end
      call_user[run] = grp[13]
      call_ts0[run] = math.min(call_ts0[run] or grp[17], grp[17])
      local kids = call_kids[run] or {}
      call_kids[run] = kids
      for _, c in ipairs(grp[19]) do
        kids[#kids + 1] = c
        local ps = call_parents[c] or {}
        call_parents[c] = ps
        ps[#ps + 1] = run
      end
    end
    -- the call's entries of the runs of a tree, in batch order; indexed by run the first
    -- time a level fires
    local by_run = nil
    local function tree_events(members)
      if not by_run then
        by_run = {}
        for _, grp in ipairs(tgroups) do
          local run, ids = grp[8], grp[2]
          local list = by_run[run] or {}
          by_run[run] = list
          -- per entry, flat: position in the batch, cost, tokens, 0 | 1 ok | 2 failed tool
          -- call, linked run
          local d = grp[22]
          for i = 1, #ids do
            local j = 5 * (i - 1)
            list[#list + 1] = {d[j + 1], run, ids[i], tonumber(d[j + 2]), tonumber(d[j + 3]),
                               d[j + 4], d[j + 5]}
          end
        end
      end
      local out = {}
      for r in pairs(members) do
        for _, e in ipairs(by_run[r] or {}) do out[#out + 1] = e end
      end
      table.sort(out, function(x, y) return x[1] < y[1] end)
      return out
    end

    -- runs as read (before the call) and as they will be (after it), read at most once
    local nodes, reads = {}, 0
    local function node(r)
      local n = nodes[r]
      if n ~= nil then return n end
      if reads >= cap then return false end
      reads = reads + 1
      local v = redis.call('HMGET', run_p .. part(r), 'ct', 'tt', 'to', 'tf', 'user', 'ts0')
      local a = inc[r]
      if not (v[5] or v[6] or a) then nodes[r] = false; return false end
      local key = kids_p .. part(r)
      local stored = redis.call('ZRANGE', key, 0, limit - 1)
      local full = #stored == limit
      if full then cut[1] = cut[1] + redis.call('ZCARD', key) - limit end
      local is_stored, before, after = {}, {}, {}
      for _, c in ipairs(stored) do is_stored[c] = true; before[#before + 1] = c end
      for _, c in ipairs(stored) do after[#after + 1] = c end
      local new = {}
      for _, c in ipairs(call_kids[r] or {}) do
        if not is_stored[c] and not new[c]
            and (not full or not redis.call('ZSCORE', key, c)) then
          new[c] = true
          after[#after + 1] = c
        end
      end
      if #after > limit then
        table.sort(after)
        for i = #after, limit + 1, -1 do after[i] = nil end
      end
      local b = {tonumber(v[1]) or 0, tonumber(v[2]) or 0, tonumber(v[3]) or 0,
                 tonumber(v[4]) or 0}
      a = a or {0, 0, 0, 0}
      local ts0 = tonumber(v[6])
      if call_ts0[r] and (ts0 == nil or call_ts0[r] < ts0) then ts0 = call_ts0[r] end
      n = {before = b, after = {b[1] + a[1], b[2] + a[2], b[3] + a[3], b[4] + a[4]},
           kids_before = before, kids_after = after, new = new,
           user = v[5] or call_user[r] or '', ts0 = ts0 or 0}
      nodes[r] = n
      return n
    end

    -- the tree of `root`: breadth-first, each run once, at most `depth` levels down
    local function tree(root, kids_of, totals_of)
      local members, frontier = {[root] = true}, {root}
      local x = totals_of(root)
      local sum = {x[1], x[2], x[3], x[4]}
      for level = 1, depth + 1 do
        local nxt = {}
        for _, r in ipairs(frontier) do
          for _, c in ipairs(kids_of(r)) do
            if not members[c] and node(c) then
              if level > depth then return sum, members, true end
              members[c] = true
              nxt[#nxt + 1] = c
              local y = totals_of(c)
              sum[1], sum[2], sum[3], sum[4] = sum[1] + y[1], sum[2] + y[2], sum[3] + y[3],
                sum[4] + y[4]
            end
          end
        end
        if #nxt == 0 then break end
        frontier = nxt
      end
      return sum, members, false
    end
    local function after_kids(r) return node(r).kids_after end
    local function after_totals(r) return node(r).after end

    local function observed_text(c, s)
      if c[1] == 'c' then return fmt_usd(s[1]) end
      if c[1] == 't' then return fmt_int(s[2]) end
      return fmt_rate(s[4], s[3] + s[4])
    end

    -- the call's entries replayed in batch order on the state before it: the first after
    -- which `c` holds on `root`'s tree. Only entries of runs in the tree after the call
    -- can count: links are only added, so the tree only grows during the replay.
    local function crossing(root, c, members_after)
      local evs = tree_events(members_after)
      local extra, linked = {}, {}
      local function kids_of(r)
        local n = node(r)
        local l = linked[r]
        if not l then return n.kids_before end
        local out = {}
        for _, k in ipairs(n.kids_before) do out[#out + 1] = k end
        for _, k in ipairs(l) do out[#out + 1] = k end
        return out
      end
      local function totals_of(r)
        local b, x = node(r).before, extra[r]
        if not x then return b end
        return {b[1] + x[1], b[2] + x[2], b[3] + x[3], b[4] + x[4]}
      end
      local sum, members = tree(root, kids_of, totals_of)
      for _, e in ipairs(evs) do
        local run = e[2]
        local x = extra[run] or {0, 0, 0, 0}
        extra[run] = x
        local ok = e[6] == 1 and 1 or 0
        local bad = e[6] == 2 and 1 or 0
        x[1], x[2], x[3], x[4] = x[1] + e[4], x[2] + e[5], x[3] + ok, x[4] + bad
        local child, relinked = e[7], false
        if child and child ~= '' and node(run) and node(run).new[child] then
          local l = linked[run] or {}
          linked[run] = l
          local already = false
          for _, k in ipairs(l) do if k == child then already = true end end
          if not already then l[#l + 1] = child; relinked = true end
        end
        if relinked and members[run] then
          sum, members = tree(root, kids_of, totals_of)
        elseif members[run] then
          sum[1], sum[2], sum[3], sum[4] = sum[1] + e[4], sum[2] + e[5], sum[3] + ok,
            sum[4] + bad
        end
        if members[run] and holds(c, sum[1], sum[2], sum[3], sum[4]) then
          return e[3], observed_text(c, sum)
        end
      end
      return nil, nil
    end

    -- subjects: the touched runs and their ancestors (links of this call included)
    local subjects, is_subject = {}, {}
    for _, r in ipairs(touched) do
      if not is_subject[r] then is_subject[r] = true; subjects[#subjects + 1] = r end
    end
    local frontier = touched
    for _ = 1, depth do
      if #frontier == 0 or #subjects >= cap then break end
      local nxt = {}
      for _, r in ipairs(frontier) do
        local ups = redis.call('SMEMBERS', parents_p .. part(r))
        for _, p in ipairs(call_parents[r] or {}) do ups[#ups + 1] = p end
        for _, p in ipairs(ups) do
          if not is_subject[p] then
            is_subject[p] = true; subjects[#subjects + 1] = p; nxt[#nxt + 1] = p
          end
        end
      end
      frontier = nxt
    end

    local fired = {}
    for _, s in ipairs(subjects) do
      -- a run whose every level of every rule has fired has nothing left to decide: its
      -- tree is not walked again (the mark names the rules, so other rules start over)
      local done_key = tr[10] .. part(s) .. ':' .. control.run_rules_tag
      local n = redis.call('EXISTS', done_key) == 0 and node(s)
      if n then
        local sum, members, deep = tree(s, after_kids, after_totals)
        if deep then cut[2] = cut[2] + 1 end
        local all = true
        for _, c in ipairs(rules) do
          if not holds(c, sum[1], sum[2], sum[3], sum[4]) then
            all = false
          else
            local id = run_alert_id(tenant, c[6], s, c[2])
            local marker = tr[5] .. id
            if not fired[id] and redis.call('EXISTS', marker) == 0 then
              fired[id] = true
              local entry_id, observed = crossing(s, c, members)
              if not entry_id then
                -- not reached by the replay (cannot happen): the tree's last entry
                local evs = tree_events(members)
                entry_id, observed = evs[#evs][3], observed_text(c, sum)
              end
              firing[#firing + 1] = {
                marker = marker, record = tr[6] .. id, id = id, subject = s,
                indexes = n.user ~= '' and {tr[7], tr[8] .. part(s), tr[9] .. part(n.user)}
                  or {tr[7], tr[8] .. part(s)},
                alert = {
                  alertId = id, rule = c[6], level = c[2], tenantId = tenant,
                  subject = {type = 'run', id = s},
                  window = {kind = 'run', start = n.ts0, ['end'] = cjson.null},
                  metric = c[8], observed = observed, threshold = c[7],
                  triggeredAt = now_ms, entryId = entry_id,
                  message = c[6] .. ': run ' .. s .. ' (with its sub-agents) reached ' ..
                    observed .. ' ' .. c[8] .. ' (' .. c[2] .. ' threshold ' .. c[7] .. ')',
                },
              }
            end
          end
        end
        if all then done[#done + 1] = done_key end
      end
    end
  end
  return firing, cut, done
end


-- 1. offsets: Redis must still hold what this worker last wrote for each partition
local offsets = control.offsets
if offsets then
  local key, parts = offsets[1], offsets[2]
  local names = {}
  for i, p in ipairs(parts) do names[i] = p[1] end
  local current = hmget_chunked(key, names)
  local stale = {}
  for i, p in ipairs(parts) do
    local cur = current[i] or ''
    -- equal to the target: an earlier attempt of this very batch wrote it
    if cur ~= p[3] and cur ~= p[2] then stale[#stale + 1] = {p[1], cur} end
  end
  if #stale > 0 then return cjson.encode({stale = stale}) end
end

-- 2. dedup: generations from the server's clock, so every worker agrees on them
local now = tonumber(redis.call('TIME')[1])
local dedup_ttl = tonumber(control.dedup_ttl)
local generation = math.floor(now / dedup_ttl)
local dedup_expire_at = fmt_int((generation + 2) * dedup_ttl)
local seen_keys = {}
for t, prefix in ipairs(groups_payload.seen) do
  seen_keys[t] = {prefix .. fmt_int(generation), prefix .. fmt_int(generation - 1)}
end
local ids_of = {}
for _, grp in ipairs(groups) do
  local t = grp[1]
  ids_of[t] = ids_of[t] or {}
  local list = ids_of[t]
  for _, id in ipairs(grp[2]) do list[#list + 1] = id end
end
-- id -> the mark found (this batch's token, or another batch's)
local marks_of = {}
for t, ids in pairs(ids_of) do
  local found = {}
  for _, key in ipairs(seen_keys[t]) do
    local got = hmget_chunked(key, ids)
    for i, id in ipairs(ids) do
      if got[i] and not found[id] then found[id] = got[i] end
    end
  end
  marks_of[t] = found
end

-- 3. per group: seen ids, then the run's metadata and every counter it increments
local results = {}
local passed = {}
local failed = false
for gi, grp in ipairs(groups) do
  local ids, h, incr = grp[2], grp[4], grp[16]
  local found = marks_of[grp[1]]
  local others, ours = {}, {}
  for _, id in ipairs(ids) do
    local mark = found[id]
    if mark == token then ours[#ours + 1] = id elseif mark then others[#others + 1] = id end
  end
  if #ours == #ids then
    failed = true
    results[#results + 1] = {gi - 1, 'done', {}}
  elseif #others > 0 or #ours > 0 then
    failed = true
    results[#results + 1] = {gi - 1, 'seen', others, ours}
  else
    local names = {'user', 'ts0', 'ts1', 'agent'}
    for i = 1, #incr, 2 do names[#names + 1] = fields[incr[i]] end
    local meta = hmget_chunked(h, names)
    local too_big = nil
    for i = 1, #incr, 2 do
      local v = (tonumber(meta[4 + (i + 1) / 2]) or 0) + tonumber(incr[i + 1])
      if v >= INT_LIMIT or v <= -INT_LIMIT then too_big = fields[incr[i]]; break end
    end
    if too_big then
      failed = true
      results[#results + 1] = {gi - 1, 'overflow', too_big}
    else
      passed[#passed + 1] = {grp, meta}
    end
  end
end

-- 4. per user: which of its months are invoiced (late entries become adjustments of
-- the invoice), and its all-time counters, the largest of its windows, within 64 bits
local users = groups_payload.users
local invoiced = {}
for ui, u in ipairs(users) do
  local windows, months = u[3], u[5]
  for mi, m in ipairs(months) do
    local found = redis.call('EXISTS', m[1])
    if found ~= m[2] then
      failed = true
      invoiced[#invoiced + 1] = {ui - 1, mi - 1, found}
    end
  end
  local all = windows[1]
  local incr = all[3]
  local names = {}
  for i = 1, #incr, 2 do names[#names + 1] = fields[incr[i]] end
  local cur = hmget_chunked(all[1], names)
  for i = 1, #incr, 2 do
    local v = (tonumber(cur[(i + 1) / 2]) or 0) + tonumber(incr[i + 1])
    if v >= INT_LIMIT or v <= -INT_LIMIT then
      failed = true
      for _, g in ipairs(u[6]) do results[#results + 1] = {g - 1, 'overflow', fields[incr[i]]} end
      break
    end
  end
end
-- 5. alerts: each check of each window holds after the call or not; one that holds and
-- has not fired yet fires, named after the entry of the call that made it hold (the
-- call carries those entries only when asked: a refusal asks for them)
local firing = {}
local need_detail = {}
if not failed then
  for ui, u in ipairs(users) do
    for wi, w in ipairs(u[3]) do
      local checks = w[4]
      if checks then
        local cur = redis.call('HMGET', w[1], 'ct', 'tt', 'to', 'tf')
        local c0, t0 = tonumber(cur[1]) or 0, tonumber(cur[2]) or 0
        local o0, f0 = tonumber(cur[3]) or 0, tonumber(cur[4]) or 0
        local d = w[5]
        local c1, t1 = c0 + tonumber(d[1]), t0 + tonumber(d[2])
        local o1, f1 = o0 + d[3], f0 + d[4]
        for _, c in ipairs(checks) do
          if holds(c, c1, t1, o1, f1) and redis.call('EXISTS', c[7]) == 0 then
            if w[6] == 0 then
              need_detail[#need_detail + 1] = {ui - 1, wi - 1}
              break
            end
            -- walk the call's entries of this window in batch order
            local cost, tokens, ok, bad = c0, t0, o0, f0
            local entry_id, observed = nil, nil
            for _, e in ipairs(w[7]) do
              cost = cost + tonumber(e[2]); tokens = tokens + e[3]
              if e[4] == 1 then ok = ok + 1 elseif e[4] == 2 then bad = bad + 1 end
              if holds(c, cost, tokens, ok, bad) then
                entry_id = e[1]
                if c[1] == 'c' then observed = fmt_usd(cost)
                elseif c[1] == 't' then observed = fmt_int(tokens)
                else observed = fmt_rate(bad, ok + bad) end
                break
              end
            end
            if entry_id then firing[#firing + 1] = {u, w, c, entry_id, observed} end
          end
        end
      end
    end
  end
end
if failed or #need_detail > 0 then
  return cjson.encode({results = results, invoiced = invoiced, detail = need_detail,
                       applied = false})
end

-- 5b. run-tree alerts, decided on the state right after the call (nothing written yet)
local tree_firing, tree_cut, tree_done = {}, {0, 0}, {}
if control.run_rules then
  tree_firing, tree_cut, tree_done = run_tree_alerts(groups, fields, groups_payload.trees,
                                                     control, control.now_ms)
end

-- 6. writes: nothing below can fail
local entry_ttl = control.entry_ttl
local to_mark = {}
local applied = 0
for _, item in ipairs(passed) do
  local grp, meta = item[1], item[2]
  local tenant_index, ids, body_spans = grp[1], grp[2], grp[3]
  local h, h_kids, h_entries, h_index, run_id = grp[4], grp[5], grp[6], grp[7], grp[8]
  local idx_all, idx_user, idx_agent, idx_user_agent = grp[9], grp[10], grp[11], grp[12]
  local user, tenant, agent = grp[13], grp[14], grp[15]
  local incr, min_ts, max_ts, children, stamps = grp[16], grp[17], grp[18], grp[19], grp[20]

  local marks = to_mark[tenant_index] or {}
  to_mark[tenant_index] = marks
  for _, id in ipairs(ids) do
    marks[#marks + 1] = id
    marks[#marks + 1] = token
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
    set[#set + 1] = 'ts0'; set[#set + 1] = fmt_int(min_ts)
  end
  if updated == nil or max_ts > updated then
    set[#set + 1] = 'ts1'; set[#set + 1] = fmt_int(max_ts)
  end
  if #set > 0 then redis.call('HSET', h, unpack(set)) end
  for i = 1, #incr, 2 do
    redis.call('HINCRBY', h, fields[incr[i]], incr[i + 1])
  end
  if #children > 0 then
    local kids = {}
    for _, c in ipairs(children) do kids[#kids + 1] = 0; kids[#kids + 1] = c end
    call_chunked('ZADD', h_kids, kids)
    -- and the way back up, for run-tree alerts (section 5b)
    for _, parents in ipairs(grp[21]) do redis.call('SADD', parents, run_id) end
  end
  -- raw entries and their (timestamp, id) index, kept for the retention period after
  -- the run's last write
  local bodies, index = {}, {}
  local pos = body_spans[1]
  for i, id in ipairs(ids) do
    local len = body_spans[i + 1]
    bodies[#bodies + 1] = id
    bodies[#bodies + 1] = string.sub(blob, pos, pos + len - 1)
    index[#index + 1] = stamps[i]
    index[#index + 1] = id
    pos = pos + len
  end
  call_chunked('HSET', h_entries, bodies)
  call_chunked('ZADD', h_index, index)
  redis.call('EXPIRE', h_entries, entry_ttl)
  redis.call('EXPIRE', h_index, entry_ttl)
  -- run indexes scored by startedAt: touched only when the start moves (rarely)
  if moved_start then
    local score = fmt_int(started)
    redis.call('ZADD', idx_all, score, run_id)
    redis.call('ZADD', idx_user, score, run_id)
    if idx_agent ~= '' then
      redis.call('ZADD', idx_agent, score, run_id)
      redis.call('ZADD', idx_user_agent, score, run_id)
    end
  end
end

-- every window written gets a version no other write of it shares (this batch's token
-- and the server's clock in microseconds, so not even after Redis lost writes), so
-- readers may cache what they made of a window for as long as its version stands
local clock = redis.call('TIME')
local version = token .. ':' .. clock[1] .. '.' .. clock[2]
for _, u in ipairs(users) do
  for _, w in ipairs(u[3]) do
    local key, expire_at, incr = w[1], w[2], w[3]
    for i = 1, #incr, 2 do
      redis.call('HINCRBY', key, fields[incr[i]], incr[i + 1])
    end
    redis.call('HSET', key, 'v', version)
    if expire_at ~= 0 then redis.call('EXPIREAT', key, expire_at) end
  end
  local billing = u[4]
  for i = 1, #billing, 4 do
    redis.call('ZADD', billing[i], 0, billing[i + 1])
    redis.call('SADD', billing[i + 2], billing[i + 3])
  end
  -- entries of an invoiced month: the invoice's adjustment grows with the rollup, and
  -- each one is appended to the outbox in the same step (processor/outbox.py relays it)
  for _, m in ipairs(u[5]) do
    if m[2] == 1 then
      for _, adj in ipairs(m[3]) do
        redis.call('HINCRBY', m[1], 'adj', adj[2])
        redis.call('XADD', control.outbox, '*', 'k', adj[4], 'v', adj[3], 'id', adj[1])
      end
    end
  end
end

local now_ms = control.now_ms
for _, f in ipairs(firing) do
  local u, w, c, entry_id, observed = f[1], f[2], f[3], f[4], f[5]
  local tenant, user = u[9], u[10]
  local alert = {
    alertId = c[6], rule = c[9], level = c[2], tenantId = tenant,
    subject = {type = 'user', id = user},
    window = {kind = w[8], start = w[9], ['end'] = w[10]},
    metric = c[11], observed = observed, threshold = c[10],
    triggeredAt = now_ms, entryId = entry_id,
    message = c[9] .. ': user ' .. user .. ' reached ' .. observed .. ' ' .. c[11] ..
      ' in the ' .. w[8] .. ' window (' .. c[2] .. ' threshold ' .. c[10] .. ')',
  }
  local text = cjson.encode(alert)
  -- the marker lives as long as the window can still change
  if w[2] ~= 0 then
    redis.call('SET', c[7], '1', 'EXAT', w[2])
  else
    redis.call('SET', c[7], '1')
  end
  redis.call('SET', c[8], text, 'PX', control.alert_ttl_ms)
  local oldest = now_ms - control.alert_ttl_ms
  for _, index in ipairs({u[7], u[8]}) do
    redis.call('ZADD', index, now_ms, c[6])
    redis.call('ZREMRANGEBYSCORE', index, '-inf', '(' .. fmt_int(oldest))
  end
  redis.call('XADD', control.alerts_outbox, '*', 'k', user, 'v', text, 'id', c[6],
             'at', fmt_int(now_ms))
end

for _, f in ipairs(tree_firing) do
  local text = cjson.encode(f.alert)
  -- a run's window is its lifetime: the marker stays
  redis.call('SET', f.marker, '1')
  redis.call('SET', f.record, text, 'PX', control.alert_ttl_ms)
  local oldest = now_ms - control.alert_ttl_ms
  for _, index in ipairs(f.indexes) do
    redis.call('ZADD', index, now_ms, f.id)
    redis.call('ZREMRANGEBYSCORE', index, '-inf', '(' .. fmt_int(oldest))
  end
  redis.call('XADD', control.alerts_outbox, '*', 'k', f.subject, 'v', text, 'id', f.id,
             'at', fmt_int(now_ms))
end

for _, key in ipairs(tree_done) do redis.call('SET', key, '1') end

for t, marks in pairs(to_mark) do
  local key = seen_keys[t][1]
  call_chunked('HSET', key, marks)
  redis.call('EXPIREAT', key, dedup_expire_at)
end
if applied > 0 then
  redis.call('HINCRBY', control.stats, 'applied', applied)
end

local offsets_written = false
if offsets and control.write_offsets and not failed then
  local sets = {}
  for _, p in ipairs(offsets[2]) do sets[#sets + 1] = p[1]; sets[#sets + 1] = p[3] end
  call_chunked('HSET', offsets[1], sets)
  offsets_written = true
end

return cjson.encode({results = results, offsets = offsets_written, applied = true,
                     cut = tree_cut})
