-- Undo a create whose publish was not confirmed: the job never existed for anyone but a live watcher,
-- who gets a 'deleted' event. ARGV[1] = JSON {prefix, id, idem_key, events_maxlen, now}.
local s = cjson.decode(ARGV[1])
local p = s.prefix
local rec = p .. ':job:' .. s.id
local cur = redis.call('HMGET', rec, 'state', 'tenant', 'queue', 'type')
if not cur[1] then return 0 end
local t = p .. ':t:' .. cur[2] .. ':idx:'
redis.call('ZREM', t .. 'all', s.id)
redis.call('ZREM', t .. 'state:' .. cur[1], s.id)
redis.call('ZREM', t .. 'type:' .. cur[4], s.id)
redis.call('ZREM', t .. 'queue:' .. cur[3], s.id)
redis.call('HINCRBY', p .. ':counts', cur[2] .. '|' .. cur[3] .. '|' .. cur[1], -1)
redis.call('ZREM', p .. ':schedule', s.id)
if s.idem_key ~= nil and s.idem_key ~= cjson.null then redis.call('DEL', s.idem_key) end
redis.call('DEL', rec, rec .. ':events')
redis.call('XADD', p .. ':events', 'MAXLEN', '~', s.events_maxlen, '*', 'job', s.id, 'tenant', cur[2],
           'type', cur[4], 'queue', cur[3], 'kind', 'deleted', 'state', cur[1], 'at', tostring(s.now))
return 1
