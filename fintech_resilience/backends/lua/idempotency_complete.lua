-- Store the response of a claimed record: compare-and-set on the owner token and a live lease.
-- The owner token and lease end stay in the completed record (nothing reads them once `st` is
-- 'c'; not deleting them saves a command on every completion).
-- KEYS[1]  the record hash (see idempotency_claim.lua)
-- ARGV     now_us (0 = TIME), owner token, stored response, ttl_us
-- Returns  {1, 0} stored; {0, 1} not the owner (released or reclaimed); {0, 2} lease expired
--#include _now.lua
--#include _lease_held.lua
local key = KEYS[1]
local refused = lease_refusal(key, ARGV[2])
if refused then return refused end
redis.call('HSET', key, 'st', 'c', 'res', ARGV[3], 'co', string.format('%.17g', now))
redis.call('PEXPIRE', key, math.ceil(tonumber(ARGV[4]) / 1000))
return {1, 0}
