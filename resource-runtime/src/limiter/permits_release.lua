-- Releases leases: the permits go to the next process that asks.
--
-- KEYS[1]  the permits' sorted set (see permits_acquire.lua).
-- ARGV[1..]  the lease ids.
--
-- Returns how many were still held.
return redis.call('ZREM', KEYS[1], unpack(ARGV))
