-- Extend a live concurrency lease.
-- KEYS[1]  sorted set: token -> lease expiry (microseconds)
-- ARGV     now_us (0 = TIME), lease_us, token
-- Returns {renewed (0 if the lease had expired: the slot may belong to someone else now)}
--#include _now.lua
local lease = tonumber(ARGV[2])
local expiry = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[3]) or 0)
if expiry <= now then
  redis.call('ZREM', KEYS[1], ARGV[3])
  return {0}
end
redis.call('ZADD', KEYS[1], string.format('%.17g', now + lease), ARGV[3])
if redis.call('PTTL', KEYS[1]) < math.ceil(lease / 1000) then
  redis.call('PEXPIRE', KEYS[1], math.ceil(lease / 1000))
end
return {1}
