-- Holds every acquisition back until ARGV[1] microseconds past the server's now: the
-- client sends a delay, and the deadline is set on the server's clock.
--
-- KEYS[1]  the limiter's hash (see acquire.lua).
-- ARGV[1]  the pause, in microseconds from now.
-- ARGV[2]  milliseconds the hash outlives the end of its schedule.
--
-- Returns the pause's end, in microseconds since the Unix epoch: this one, or a later
-- one already there (a pause is never shortened).
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local state = redis.call('HMGET', KEYS[1], 'tat', 'pause')
local pause = tonumber(state[2]) or 0
local wanted = now + tonumber(ARGV[1])
if wanted > pause then
  pause = wanted
  redis.call('HSET', KEYS[1], 'pause', string.format('%.0f', pause))
end
local ends = math.max((tonumber(state[1]) or 0) + 1, pause)
redis.call('PEXPIRE', KEYS[1], string.format('%.0f', math.ceil((ends - now) / 1000) + tonumber(ARGV[2])))
return pause
