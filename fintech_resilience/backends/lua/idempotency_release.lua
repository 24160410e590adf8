-- Free a claimed record (the handler failed): compare-and-set on the owner token and a live
-- lease. The fencing counter stays, so the next claim gets a higher fencing token.
-- KEYS[1]  the record hash (see idempotency_claim.lua)
-- ARGV     now_us (0 = TIME), owner token, force (1 = operator: free it whatever its state)
-- Returns  {1, 0} released; {0, 1} not the owner; {0, 2} lease expired
--#include _now.lua
--#include _lease_held.lua
local key = KEYS[1]
if ARGV[3] ~= '1' then
  local refused = lease_refusal(key, ARGV[2])
  if refused then return refused end
elseif redis.call('HEXISTS', key, 'st') == 0 then
  return {0, 1}
end
redis.call('HDEL', key, 'st', 'fp', 'own', 'lu', 'res', 'ca', 'co')
return {1, 0}
