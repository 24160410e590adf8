-- Store the response of a claimed record: compare-and-set on the owner token and a live lease.
-- KEYS[1]  the record hash (see idempotency_claim.lua)
-- ARGV     now_us (0 = TIME), owner token, stored response, ttl_us
-- Returns  {1, 0} stored; {0, 1} not the owner (released or reclaimed); {0, 2} lease expired
--#include _now.lua
local key = KEYS[1]
local r = redis.call('HMGET', key, 'st', 'own', 'lu')
if r[1] ~= 'p' or r[2] ~= ARGV[2] then
  return {0, 1}
end
if tonumber(r[3]) <= now then
  return {0, 2}
end
redis.call('HSET', key, 'st', 'c', 'res', ARGV[3], 'co', string.format('%.17g', now))
redis.call('HDEL', key, 'own', 'lu')
redis.call('PEXPIRE', key, math.ceil(tonumber(ARGV[4]) / 1000))
return {1, 0}
