-- Give a concurrency slot back.
-- KEYS[1]  sorted set: token -> lease expiry (microseconds)
-- ARGV     now_us (0 = TIME), token
-- Returns {released (0 if the lease had already expired or was never held), in_use}
local now = tonumber(ARGV[1])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.17g', now))
local released = redis.call('ZREM', KEYS[1], ARGV[2])
return {released, redis.call('ZCARD', KEYS[1])}
