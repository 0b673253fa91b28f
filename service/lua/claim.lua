-- Claim up to ARGV[2] schedule entries due at ARGV[1] (ms): move each from the schedule to the claimed set
-- with a lease until ARGV[3]. Also reclaims entries whose lease ran out (a promoter died mid-publish).
-- KEYS[1] = schedule, KEYS[2] = claimed. Two promoters never claim the same entry at once.
local now, limit, lease = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, limit)
for _, id in ipairs(expired) do redis.call('ZADD', KEYS[1], now, id); redis.call('ZREM', KEYS[2], id) end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit)
for _, id in ipairs(due) do redis.call('ZREM', KEYS[1], id); redis.call('ZADD', KEYS[2], lease, id) end
return due
