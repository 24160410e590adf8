-- Retry budget: deposit first attempts and, optionally, withdraw one retry - in one round trip.
-- KEYS[1]  hash: tokens (micro-tokens), floor (micro-tokens), at (time of the floor's last refill)
-- ARGV     now_us (0 = TIME), deposits (first attempts to credit), ratio_ppm (micro-tokens per
--          first attempt), max_utokens (cap of tokens), withdraw (0/1), floor_ppm (floor
--          micro-tokens refilled per microsecond * 1e6, i.e. min_per_second * 1e6),
--          floor_cap (micro-tokens), ttl_ms
-- All amounts are integers in micro-tokens, so sums stay exact in Lua's doubles.
-- Returns {granted (0 no, 1 from tokens, 2 from the floor), tokens, floor}
--#include _now.lua
local deposits = tonumber(ARGV[2])
local ratio = tonumber(ARGV[3])
local cap = tonumber(ARGV[4])
local withdraw = tonumber(ARGV[5])
local rate = tonumber(ARGV[6])
local floor_cap = tonumber(ARGV[7])
local h = redis.call('HMGET', KEYS[1], 'tokens', 'floor', 'at')
local tokens = tonumber(h[1]) or 0
local floor = tonumber(h[2]) or floor_cap
local at = tonumber(h[3]) or now
if now > at then
  floor = floor + math.floor((now - at) * rate / 1000000)
  at = now
end
if floor > floor_cap then floor = floor_cap end
tokens = tokens + deposits * ratio
if tokens > cap then tokens = cap end
local granted = 0
if withdraw == 1 then
  if tokens >= 1000000 then
    tokens = tokens - 1000000
    granted = 1
  elseif floor >= 1000000 then
    floor = floor - 1000000
    granted = 2
  end
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens),
  'floor', string.format('%.17g', floor), 'at', string.format('%.17g', at))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[8]))
return {granted, tokens, floor}
