-- Extend the lease of a claimed record: compare-and-set on the owner token and a live lease.
-- KEYS[1]  the record hash (see idempotency_claim.lua)
-- ARGV     now_us (0 = TIME), owner token, lease_us
-- Returns  {1, 0} renewed; {0, 1} not the owner; {0, 2} lease already expired
--#include _now.lua
--#include _lease_held.lua
local key = KEYS[1]
local lease = tonumber(ARGV[3])
local refused = lease_refusal(key, ARGV[2])
if refused then return refused end
redis.call('HSET', key, 'lu', string.format('%.17g', now + lease))
if redis.call('PTTL', key) < math.ceil(lease / 1000) then
  redis.call('PEXPIRE', key, math.ceil(lease / 1000))
end
return {1, 0}
