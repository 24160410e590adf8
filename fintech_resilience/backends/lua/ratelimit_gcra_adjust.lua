-- GCRA without admitting: peek, hit or refund, over several limits at once.
-- KEYS[i]      the theoretical arrival time (TAT) of limit i (as in ratelimit_gcra.lua)
-- ARGV[1]      now in microseconds, or 0 for the server's TIME
-- ARGV[2]      mode: 'peek', 'hit' or 'refund'
-- ARGV[3]      cost
-- ARGV[2i+2]   emission interval T_i;  ARGV[2i+3]  tolerance tau_i
-- peek    writes nothing: allowed / retry_after say whether `cost` would be admitted now.
-- hit     consumes `cost` from every limit whether or not it conforms; allowed says whether it
--         did, retry_after is the wait for the next `cost` after this hit. The debt left is
--         capped at twice the tolerance: a key over its limit is refused for at most the time
--         its bucket takes to refill.
-- refund  gives `cost` back to every limit, never beyond a full bucket; allowed = 1.
-- Returns {allowed, retry_after_us (-1 = never), remaining_1, reset_after_us_1, ...}
--#include _now.lua
local mode = ARGV[2]
local cost = tonumber(ARGV[3])
local n = #KEYS
local tats = {}
for i = 1, n do
  local tat = tonumber(redis.call('GET', KEYS[i]) or 0)
  if tat < now then tat = now end
  tats[i] = tat
end
-- whether `cost` conforms to every limit now, and the wait until it does (-1: never)
local function verdict()
  local allowed, retry = 1, 0
  for i = 1, n do
    local increment = tonumber(ARGV[2 * i + 2]) * cost
    local tau = tonumber(ARGV[2 * i + 3])
    if increment > tau then
      allowed, retry = 0, -1
    else
      -- 1 microsecond of tolerance absorbs the rounding of fractional emission intervals
      local wait = (tats[i] - now) + increment - tau
      if wait >= 1 then
        allowed = 0
        if retry >= 0 and wait > retry then retry = wait end
      end
    end
  end
  if retry > 0 then retry = math.floor(retry + 0.5) end
  return allowed, retry
end
local allowed, retry = verdict()
if mode == 'hit' then
  for i = 1, n do
    local tau = tonumber(ARGV[2 * i + 3])
    local tat = math.min(tats[i] + tonumber(ARGV[2 * i + 2]) * cost, now + 2 * tau)
    tats[i] = tat
    redis.call('SET', KEYS[i], string.format('%.17g', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
  end
  local _
  _, retry = verdict()
elseif mode == 'refund' then
  for i = 1, n do
    local tat = tats[i] - tonumber(ARGV[2 * i + 2]) * cost
    if tat > now then
      redis.call('SET', KEYS[i], string.format('%.17g', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
    else
      tat = now
      redis.call('DEL', KEYS[i])
    end
    tats[i] = tat
  end
  allowed, retry = 1, 0
end
local out = {allowed, retry}
for i = 1, n do
  local interval = tonumber(ARGV[2 * i + 2])
  local tau = tonumber(ARGV[2 * i + 3])
  local remaining = math.floor((tau - (tats[i] - now)) / interval + 1e-6)
  if remaining < 0 then remaining = 0 end
  out[2 * i + 1] = remaining
  out[2 * i + 2] = math.floor(tats[i] - now + 0.5)
end
return out
