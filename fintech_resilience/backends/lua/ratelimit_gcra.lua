-- GCRA (generic cell rate algorithm): several limits checked and consumed all-or-nothing.
-- KEYS[i]      the theoretical arrival time (TAT) of limit i, in microseconds (one hash tag)
-- ARGV[1]      now in microseconds, or 0 for the server's TIME
-- ARGV[2]      cost
-- ARGV[2i+1]   emission interval T_i = period / limit (microseconds, may be fractional)
-- ARGV[2i+2]   tolerance tau_i = T_i * burst
-- A request is admitted when it would conform within 1 microsecond; durations are rounded to
-- the nearest microsecond.
-- Keys live 1 s past the time the bucket is full again: a request stamped by a client clock
-- that reaches Redis late must still find the state it was stamped against.
-- Returns {allowed, retry_after_us (-1 = never), remaining_1, reset_after_us_1, ...}
--#include _now.lua
local cost = tonumber(ARGV[2])
local n = #KEYS
local tats = {}
local allowed = 1
local retry = 0
for i = 1, n do
  local interval = tonumber(ARGV[2 * i + 1])
  local tau = tonumber(ARGV[2 * i + 2])
  local tat = tonumber(redis.call('GET', KEYS[i]) or 0)
  if tat < now then tat = now end
  tats[i] = tat
  local increment = interval * cost
  if increment > tau then
    allowed = 0
    retry = -1
  else
    -- 1 microsecond of tolerance absorbs the rounding of fractional emission intervals
    local wait = (tat - now) + increment - tau
    if wait >= 1 then
      allowed = 0
      if retry >= 0 and wait > retry then retry = wait end
    end
  end
end
local out = {allowed, 0}
if retry > 0 then out[2] = math.floor(retry + 0.5) elseif retry < 0 then out[2] = -1 end
for i = 1, n do
  local interval = tonumber(ARGV[2 * i + 1])
  local tau = tonumber(ARGV[2 * i + 2])
  local tat = tats[i]
  if allowed == 1 then
    tat = tat + interval * cost
    redis.call('SET', KEYS[i], string.format('%.17g', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
  end
  local remaining = math.floor((tau - (tat - now)) / interval + 1e-6)
  if remaining < 0 then remaining = 0 end
  out[2 * i + 1] = remaining
  out[2 * i + 2] = math.floor(tat - now + 0.5)
end
return out
