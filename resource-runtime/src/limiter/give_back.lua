-- Gives back the tokens of a booking whose waiter left before its time, if nobody
-- booked after it: the schedule still ends where that booking left it.
--
-- KEYS[1]  the limiter's hash (see acquire.lua).
-- ARGV[1], ARGV[2]  the tat and frac the booking left.
-- ARGV[3], ARGV[4]  its tokens, as whole microseconds and a fraction.
-- ARGV[5]  the fraction's denominator.
--
-- Returns 1 when the tokens were given back; 0 when the schedule moved since (another
-- booking, or the hash expired or was lost), and the tokens stay spent.
local state = redis.call('HMGET', KEYS[1], 'tat', 'frac')
if tonumber(state[1]) ~= tonumber(ARGV[1]) or tonumber(state[2]) ~= tonumber(ARGV[2]) then
  return 0
end
local tat = tonumber(ARGV[1]) - tonumber(ARGV[3])
local frac = tonumber(ARGV[2]) - tonumber(ARGV[4])
if frac < 0 then
  tat = tat - 1
  frac = frac + tonumber(ARGV[5])
end
-- HSET keeps the hash's expiry, which is past this earlier end already.
redis.call('HSET', KEYS[1], 'tat', string.format('%.0f', tat), 'frac', string.format('%.0f', frac))
return 1
