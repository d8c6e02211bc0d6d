-- Takes one fleet permit: a lease in a sorted set scored by its expiry, on the
-- server's clock (TIME, in milliseconds), so the processes' clocks do not matter.
--
-- KEYS[1]  the permits' sorted set: lease ids scored by when they expire.
-- ARGV[1]  the fleet-wide limit.
-- ARGV[2]  the lease's time to live, in milliseconds.
-- ARGV[3]  milliseconds the set outlives its last lease.
-- ARGV[4]  the lease id.
--
-- Returns 1 when the lease is held (taken now, or already held: a retried call),
-- 0 when the limit is reached.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local ttl = tonumber(ARGV[2])
-- Leases whose holder stopped renewing them (a killed process) are gone.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
local held = redis.call('ZSCORE', KEYS[1], ARGV[4])
if not held and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], string.format('%.0f', now + ttl), ARGV[4])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', KEYS[1], string.format('%.0f', math.max(1, tonumber(last[2]) - now + tonumber(ARGV[3]))))
return 1
