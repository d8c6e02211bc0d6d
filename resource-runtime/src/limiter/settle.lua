-- Corrects an acquisition whose real cost is known only afterwards: charges tokens
-- (the schedule may end up ahead of a full burst: later bookings wait it out) or gives
-- them back (never past a full burst now), on the server's clock.
--
-- KEYS[1]  the limiter's hash (see acquire.lua).
-- ARGV[1]  1: charge; 0: give back.
-- ARGV[2], ARGV[3]  the tokens, as whole microseconds and a fraction.
-- ARGV[4]  the fraction's denominator.
-- ARGV[5]  milliseconds the hash outlives the end of its schedule.
--
-- Returns {tat, frac}: where the schedule ends now.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local state = redis.call('HMGET', KEYS[1], 'tat', 'frac', 'pause')
local pause = tonumber(state[3]) or 0
local base = math.max(now, pause)
local tat = tonumber(state[1])
local frac = tonumber(state[2]) or 0
if tat == nil or tat < base then
  tat = base
  frac = 0
end
local denom = tonumber(ARGV[4])
if tonumber(ARGV[1]) == 1 then
  tat = tat + tonumber(ARGV[2])
  frac = frac + tonumber(ARGV[3])
  if frac >= denom then
    tat = tat + 1
    frac = frac - denom
  end
else
  tat = tat - tonumber(ARGV[2])
  frac = frac - tonumber(ARGV[3])
  if frac < 0 then
    tat = tat - 1
    frac = frac + denom
  end
  if tat < base then
    tat = base
    frac = 0
  end
end
redis.call('HSET', KEYS[1], 'tat', string.format('%.0f', tat), 'frac', string.format('%.0f', frac))
local ends = math.max(tat + 1, pause)
redis.call('PEXPIRE', KEYS[1], string.format('%.0f', math.ceil((ends - now) / 1000) + tonumber(ARGV[5])))
return {tat, frac}
