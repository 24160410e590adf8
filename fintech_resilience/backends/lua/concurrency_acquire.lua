-- Take one concurrency slot as a lease (re-entrant for the same token).
-- KEYS[1]  sorted set: token -> lease expiry (microseconds)
-- ARGV     now_us (0 = TIME), limit, lease_us, token
-- Returns {acquired, in_use, wait_us until the earliest lease expires (0 if acquired)}
--#include _now.lua
local limit = tonumber(ARGV[2])
local lease = tonumber(ARGV[3])
local token = ARGV[4]
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.17g', now))
local in_use = redis.call('ZCARD', KEYS[1])
local held = redis.call('ZSCORE', KEYS[1], token)
if held or in_use < limit then
  redis.call('ZADD', KEYS[1], string.format('%.17g', now + lease), token)
  redis.call('PEXPIRE', KEYS[1], math.ceil(lease / 1000))
  if not held then in_use = in_use + 1 end
  return {1, in_use, 0}
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, in_use, math.ceil(tonumber(first[2]) - now)}
