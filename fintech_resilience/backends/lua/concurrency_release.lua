-- Give a concurrency slot back.
-- KEYS[1]  sorted set: token -> lease expiry (microseconds)
-- ARGV     now_us (0 = TIME), token
-- Returns {released (0 if the lease had already expired or was never held), in_use}
--#include _now.lua
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.17g', now))
local released = redis.call('ZREM', KEYS[1], ARGV[2])
return {released, redis.call('ZCARD', KEYS[1])}
