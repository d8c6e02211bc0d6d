-- Renews every lease of one process in one call.
--
-- KEYS[1]  the permits' sorted set (see permits_acquire.lua).
-- ARGV[1]  the lease's time to live, in milliseconds.
-- ARGV[2]  milliseconds the set outlives its last lease.
-- ARGV[3..]  the lease ids.
--
-- Returns how many were renewed. A lease that is gone (another process dropped it
-- once it expired) is not taken again: its holder has lost it. One that expired but
-- is still there was counted by every admission since, so renewing it admits nobody
-- twice.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local expires = string.format('%.0f', now + tonumber(ARGV[1]))
local renewed = 0
for i = 3, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], expires, ARGV[i])
    renewed = renewed + 1
  end
end
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] then
  redis.call('PEXPIRE', KEYS[1], string.format('%.0f', math.max(1, tonumber(last[2]) - now + tonumber(ARGV[2]))))
end
return renewed
