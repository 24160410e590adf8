-- Circuit breaker: ask for permission to call (used when the caller does not know the breaker is
-- CLOSED: first call, OPEN whose break has passed, HALF_OPEN). Turns OPEN into HALF_OPEN once the
-- break is over and hands out at most ARGV[3] probe permits, as leases that expire.
-- KEYS[1]  hash of the breaker (fields: see breaker_record.lua)
-- ARGV     now_us (0 = TIME), token, half_open_calls, probe_lease_us, ttl_ms
-- Returns {state, gen, retry_after_us, granted, transition_from (-1: none), calls, failures, slow}
-- states: 0 CLOSED, 1 OPEN, 2 HALF_OPEN, 3 FORCED_OPEN, 4 DISABLED, 5 METRICS_ONLY
--#include _now.lua
local key = KEYS[1]
local token = ARGV[2]
local hoc = tonumber(ARGV[3])
local lease = tonumber(ARGV[4])
local h = redis.call('HMGET', key, 'st', 'ov', 'gen', 'until', 'hn', 'probes', 'n', 'f', 's')
local st = tonumber(h[1] or 0)
local ov = tonumber(h[2] or 0)
local gen = tonumber(h[3] or 0)
local untl = tonumber(h[4] or 0)
local hn = tonumber(h[5] or 0)
local granted = 0
local from = -1
local ra = 0
local changed = false
local probes = {}
if ov == 3 then
  granted = 0
elseif ov == 4 or ov == 5 or st == 0 then
  granted = 1
else
  if st == 1 then
    if now < untl then
      ra = untl - now
    else
      st = 2
      gen = gen + 1
      from = 1
      hn = 0
      changed = true
    end
  end
  if st == 2 then
    local live = 0
    local earliest = -1
    if from == -1 and h[6] then
      for tok, exp in string.gmatch(h[6], '([^=;]+)=([^;]+);') do
        exp = tonumber(exp)
        if exp > now then
          probes[tok] = exp
          live = live + 1
          if earliest < 0 or exp < earliest then earliest = exp end
        else
          changed = true
        end
      end
    end
    if live + hn < hoc then
      probes[token] = now + lease
      granted = 1
      changed = true
    elseif earliest >= 0 then
      ra = earliest - now
    end
  end
end
if changed then
  local p = ''
  for tok, exp in pairs(probes) do p = p .. tok .. '=' .. string.format('%.17g', exp) .. ';' end
  redis.call('HSET', key, 'st', st, 'gen', gen, 'hn', hn, 'probes', p)
  if from == 1 then redis.call('HDEL', key, 'hf', 'hw') end
  redis.call('PEXPIRE', key, ARGV[5])
end
local state = st
if ov ~= 0 then state = ov end
return {state, gen, math.floor(ra + 0.5), granted, from, tonumber(h[7] or 0), tonumber(h[8] or 0),
        tonumber(h[9] or 0)}
