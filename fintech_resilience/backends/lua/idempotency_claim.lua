-- Claim an idempotency record: decide execute / replay / mismatch / in progress / outcome unknown.
-- KEYS[1]  the record hash: st (p = in progress, c = completed; absent = free), fp (fingerprint),
--          own (owner token), lu (lease until, us), fen (fencing counter, kept across releases),
--          res (stored response), ca (claimed at, us), co (completed at, us)
-- ARGV     now_us (0 = TIME), fingerprint, owner token, lease_us, ttl_us, reclaim_expired (0/1)
-- Returns  {1 execute, fencing token, reclaimed (0/1), 0}
--          {2 replay, fencing token, stored response, completed at (us)}
--          {3 mismatch, fencing token, 0, 0}
--          {4 in progress, fencing token, lease left (us), 0}
--          {5 outcome unknown (lease expired while running), fencing token, 0, 0}
--#include _now.lua
local key = KEYS[1]
local lease = tonumber(ARGV[4])
local r = redis.call('HMGET', key, 'st', 'fp', 'lu', 'fen', 'res', 'co')
local fen = tonumber(r[4] or 0)
if not r[1] then
  fen = fen + 1
  redis.call('HSET', key, 'st', 'p', 'fp', ARGV[2], 'own', ARGV[3],
    'lu', string.format('%.17g', now + lease), 'fen', string.format('%.17g', fen),
    'ca', string.format('%.17g', now))
  redis.call('PEXPIRE', key, math.ceil(tonumber(ARGV[5]) / 1000))
  return {1, fen, 0, 0}
end
if r[2] ~= ARGV[2] then
  return {3, fen, 0, 0}
end
if r[1] == 'c' then
  return {2, fen, r[5], tonumber(r[6])}
end
local lu = tonumber(r[3])
if lu > now then
  return {4, fen, lu - now, 0}
end
if ARGV[6] == '1' then
  fen = fen + 1
  redis.call('HSET', key, 'own', ARGV[3], 'lu', string.format('%.17g', now + lease),
    'fen', string.format('%.17g', fen))
  if redis.call('PTTL', key) < math.ceil(lease / 1000) then
    redis.call('PEXPIRE', key, math.ceil(lease / 1000))
  end
  return {1, fen, 1, 0}
end
return {5, fen, 0, 0}
