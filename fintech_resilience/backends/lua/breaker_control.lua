-- Circuit breaker: read the state, or apply an operator command.
-- KEYS[1]  hash of the breaker (fields: see breaker_record.lua)
-- ARGV     now_us (0 = TIME), op (0 read, 1 reset, 2 force_open, 3 disable, 4 metrics_only),
--          ttl_ms
-- reset forgets everything (window, break growth, probes, override) and closes the breaker;
-- the other commands set an override that holds until reset: a hash with an override has no TTL
-- (an operator's FORCED_OPEN must not lapse because nobody wrote to the breaker for a day).
-- Returns {state, gen, retry_after_us, 0, transition_from (-1: none), calls, failures, slow}
--#include _now.lua
local key = KEYS[1]
local op = tonumber(ARGV[2])
local h = redis.call('HMGET', key, 'st', 'ov', 'gen', 'until', 'n', 'f', 's')
local st = tonumber(h[1] or 0)
local ov = tonumber(h[2] or 0)
local gen = tonumber(h[3] or 0)
local untl = tonumber(h[4] or 0)
local n = tonumber(h[5] or 0)
local f = tonumber(h[6] or 0)
local s = tonumber(h[7] or 0)
local before = st
if ov ~= 0 then before = ov end
if op == 1 then
  redis.call('DEL', key)
  st = 0
  ov = 0
  gen = gen + 1
  n = 0
  f = 0
  s = 0
  redis.call('HSET', key, 'st', 0, 'gen', gen)
  redis.call('PEXPIRE', key, ARGV[3])
elseif op >= 2 then
  local want = op + 1
  if ov ~= want then
    ov = want
    gen = gen + 1
    redis.call('HSET', key, 'st', st, 'ov', ov, 'gen', gen)
    redis.call('PERSIST', key)
  end
end
local state = st
if ov ~= 0 then state = ov end
local from = -1
if state ~= before then from = before end
local ra = 0
if state == 1 and untl > now then ra = untl - now end
return {state, gen, math.floor(ra + 0.5), 0, from, n, f, s}
