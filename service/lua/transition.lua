-- The one compare-and-set for job state: check the current state (and run generation), then update the
-- record, the state index, the per-queue counters, the schedule and both event streams in one step.
-- ARGV[1] = JSON spec (see service/store.py: JobStore.transition). Returns JSON.
local s = cjson.decode(ARGV[1])
local p = s.prefix
local rec = p .. ':job:' .. s.id
local cur = redis.call('HMGET', rec, 'state', 'generation', 'tenant', 'queue', 'type', 'crash_redeliveries',
                       'attempts', 'progress', 'progress_message')
local state = cur[1]
if not state then return cjson.encode({ok = false, reason = 'not_found'}) end
local allowed = false
for _, st in ipairs(s.from) do if st == state then allowed = true end end
if not allowed then return cjson.encode({ok = false, reason = 'state', state = state, generation = tonumber(cur[2])}) end
if s.gen ~= nil and s.gen ~= cjson.null and tonumber(cur[2]) ~= s.gen then
  return cjson.encode({ok = false, reason = 'generation', state = state, generation = tonumber(cur[2])})
end
if s.max_crash ~= nil and s.max_crash ~= cjson.null and state == s.to and tonumber(cur[6] or '0') >= s.max_crash then
  return cjson.encode({ok = false, reason = 'poison', state = state, generation = tonumber(cur[2])})
end
local tenant, queue, jtype = cur[3], cur[4], cur[5]
local set = s.set or {}
set.state = s.to
set.updated_at = tostring(s.now)
local flat = {}
for k, v in pairs(set) do flat[#flat + 1] = k; flat[#flat + 1] = tostring(v) end
redis.call('HSET', rec, unpack(flat))
for k, v in pairs(s.incr or {}) do redis.call('HINCRBY', rec, k, v) end
if state ~= s.to then
  local t = p .. ':t:' .. tenant .. ':idx:state:'
  local seq = redis.call('HGET', rec, 'seq')
  redis.call('ZREM', t .. state, s.id)
  redis.call('ZADD', t .. s.to, seq, s.id)
  local c = p .. ':counts'
  redis.call('HINCRBY', c, tenant .. '|' .. queue .. '|' .. state, -1)
  redis.call('HINCRBY', c, tenant .. '|' .. queue .. '|' .. s.to, 1)
end
if s.result_key ~= nil and s.result_key ~= cjson.null then
  -- The return value, in Dramatiq's RedisBackend layout, written with the state that makes it visible.
  redis.call('DEL', s.result_key)
  redis.call('LPUSH', s.result_key, s.result_value)
  redis.call('PEXPIRE', s.result_key, s.result_ttl_ms)
end
if s.unschedule then redis.call('ZREM', p .. ':schedule', s.id); redis.call('ZREM', p .. ':claimed', s.id) end
if s.due_ms ~= nil and s.due_ms ~= cjson.null then redis.call('ZADD', p .. ':schedule', s.due_ms, s.id) end
if s.expire_s ~= nil and s.expire_s ~= cjson.null then
  redis.call('EXPIRE', rec, s.expire_s); redis.call('EXPIRE', rec .. ':events', s.expire_s)
else
  redis.call('PERSIST', rec); redis.call('PERSIST', rec .. ':events')
end
local now = redis.call('HMGET', rec, 'attempts', 'progress', 'progress_message', 'error_type', 'error_message',
                       'generation', 'cancel_requested')
local ev = {'job', s.id, 'tenant', tenant, 'type', jtype, 'queue', queue, 'kind', s.kind or 'state',
            'state', s.to, 'percent', now[2] or '0', 'message', now[3] or '', 'attempt', now[1] or '0',
            'at', tostring(s.now)}
if s.to == 'failed' or s.to == 'retrying' then
  ev[#ev + 1] = 'error_type'; ev[#ev + 1] = now[4] or ''
  ev[#ev + 1] = 'error_message'; ev[#ev + 1] = now[5] or ''
end
local eid = redis.call('XADD', p .. ':events', 'MAXLEN', '~', s.events_maxlen, '*', unpack(ev))
redis.call('XADD', rec .. ':events', 'MAXLEN', '~', s.job_events_maxlen, eid, unpack(ev))
return cjson.encode({ok = true, state = s.to, previous = state, generation = tonumber(now[6]), event_id = eid,
                     attempts = tonumber(now[1] or '0'), cancel_requested = (now[7] == '1')})
