-- ratelimit_gcra.lua for exactly one limit: the same arithmetic and reply, without the tables
-- and loops (a limiter with one limit - the common case - spends less of Redis's time).
-- KEYS[1] the TAT in microseconds; ARGV: now (0 = TIME), cost, interval, tau - as in
-- ratelimit_gcra.lua. Returns {allowed, retry_after_us (-1 = never), remaining, reset_after_us}
--#include _now.lua
local cost = tonumber(ARGV[2])
local interval = tonumber(ARGV[3])
local tau = tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or 0)
if tat < now then tat = now end
local increment = interval * cost
local allowed, retry = 1, 0
if increment > tau then
  allowed, retry = 0, -1
else
  local wait = (tat - now) + increment - tau
  if wait >= 1 then
    allowed, retry = 0, math.floor(wait + 0.5)
  else
    tat = tat + increment
    redis.call('SET', KEYS[1], string.format('%.17g', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
  end
end
local remaining = math.floor((tau - (tat - now)) / interval + 1e-6)
if remaining < 0 then remaining = 0 end
return {allowed, retry, remaining, math.floor(tat - now + 0.5)}
