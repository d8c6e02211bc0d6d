-- One acquisition from a GCRA schedule shared through Redis, atomic, on the server's
-- clock (TIME), so the clients' clocks do not matter.
--
-- KEYS[1]  the limiter's hash:
--            tat, frac  the theoretical arrival time: `tat` whole microseconds since
--                       the Unix epoch plus `frac` / ARGV[6] of one;
--            pause      microseconds since the Unix epoch before which nobody goes.
-- ARGV[1]  1: book the tokens even when they must wait; 0: take them only if they are
--          admitted now, and book nothing otherwise.
-- ARGV[2], ARGV[3]  the tokens asked for, as whole microseconds and a fraction.
-- ARGV[4], ARGV[5]  (burst - tokens) tokens, the same way.
-- ARGV[6]  the fraction's denominator.
-- ARGV[7]  milliseconds the hash outlives the end of its schedule.
--
-- Returns {booked (1 or 0), microseconds to wait from now, tat, frac}: the caller may
-- go once it has waited; `tat` and `frac` are what this booking left, for give_back.lua.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local state = redis.call('HMGET', KEYS[1], 'tat', 'frac', 'pause')
local pause = tonumber(state[3]) or 0
-- The schedule does not run during a pause: from its end, a full burst again.
local base = math.max(now, pause)
local tat = tonumber(state[1])
local frac = tonumber(state[2]) or 0
if tat == nil or tat < base then
  tat = base
  frac = 0
end
local denom = tonumber(ARGV[6])
-- Admitted once tat + tokens - burst (in tokens' time) has come: at tat - (burst -
-- tokens), rounded up to a whole microsecond, and never during a pause.
local at = tat - tonumber(ARGV[4])
local at_frac = frac - tonumber(ARGV[5])
if at_frac < 0 then
  at = at - 1
  at_frac = at_frac + denom
end
if at_frac > 0 then
  at = at + 1
end
at = math.max(at, base)
if at > now and tonumber(ARGV[1]) == 0 then
  return {0, at - now, tat, frac}
end
-- Book: the tokens move the schedule, whether they go now or later.
tat = tat + tonumber(ARGV[2])
frac = frac + tonumber(ARGV[3])
if frac >= denom then
  tat = tat + 1
  frac = frac - denom
end
redis.call('HSET', KEYS[1], 'tat', string.format('%.0f', tat), 'frac', string.format('%.0f', frac))
-- Past the schedule's end (and the pause's) the hash holds nothing a fresh one would
-- not: let it go a little after that.
local ends = math.max(tat + 1, pause)
redis.call('PEXPIRE', KEYS[1], string.format('%.0f', math.ceil((ends - now) / 1000) + tonumber(ARGV[7])))
return {1, at - now, tat, frac}
