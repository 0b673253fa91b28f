-- Create a job record with its indexes, counters, optional schedule entry, idempotency key and first event.
-- ARGV[1] = JSON spec (see service/store.py: JobStore.create). Returns JSON.
local s = cjson.decode(ARGV[1])
local p = s.prefix
local rec = p .. ':job:' .. s.id
if s.idem_key ~= cjson.null and s.idem_key ~= nil then
  local existing = redis.call('GET', s.idem_key)
  if existing then return cjson.encode({created = false, id = existing}) end
end
if redis.call('EXISTS', rec) == 1 then return cjson.encode({created = false, id = s.id}) end
local seq = redis.call('INCR', p .. ':seq')
local f = s.fields
f.seq = tostring(seq)
local flat = {}
for k, v in pairs(f) do flat[#flat + 1] = k; flat[#flat + 1] = tostring(v) end
redis.call('HSET', rec, unpack(flat))
local t = p .. ':t:' .. f.tenant .. ':idx:'
redis.call('ZADD', t .. 'all', seq, s.id)
redis.call('ZADD', t .. 'state:' .. f.state, seq, s.id)
redis.call('ZADD', t .. 'type:' .. f.type, seq, s.id)
redis.call('ZADD', t .. 'queue:' .. f.queue, seq, s.id)
redis.call('HINCRBY', p .. ':counts', f.tenant .. '|' .. f.queue .. '|' .. f.state, 1)
if s.due_ms ~= cjson.null and s.due_ms ~= nil then redis.call('ZADD', p .. ':schedule', s.due_ms, s.id) end
if s.idem_key ~= cjson.null and s.idem_key ~= nil then redis.call('SET', s.idem_key, s.id, 'EX', s.idem_ttl_s) end
local ev = {'job', s.id, 'tenant', f.tenant, 'type', f.type, 'queue', f.queue, 'kind', 'state',
            'state', f.state, 'percent', '0', 'message', '', 'attempt', f.attempts, 'at', f.updated_at}
local eid = redis.call('XADD', p .. ':events', 'MAXLEN', '~', s.events_maxlen, '*', unpack(ev))
redis.call('XADD', rec .. ':events', 'MAXLEN', '~', s.job_events_maxlen, eid, unpack(ev))
return cjson.encode({created = true, id = s.id, seq = seq, event_id = eid})
