-- Fixed window aligned on the clock (a day starts at 00:00 UTC). All-or-nothing over limits.
-- KEYS[i]      hash {w = window index, c = count} of limit i
-- ARGV[1]      now in microseconds, or 0 for the server's TIME
-- ARGV[2]      cost
-- ARGV[2i+1]   limit_i
-- ARGV[2i+2]   window_i in microseconds
-- Keys live one window past their own, so a request stamped before the boundary that reaches
-- Redis late still counts against the window it was stamped in.
-- Returns {allowed, retry_after_us (-1 = never), remaining_1, reset_after_us_1, ...}
--#include _now.lua
local cost = tonumber(ARGV[2])
local n = #KEYS
local state = {}
local allowed = 1
local retry = 0
for i = 1, n do
  local limit = tonumber(ARGV[2 * i + 1])
  local window = tonumber(ARGV[2 * i + 2])
  local index = math.floor(now / window)
  local h = redis.call('HMGET', KEYS[i], 'w', 'c')
  local w = tonumber(h[1])
  -- a request stamped in an older window than the stored one counts against the newer window
  if w and w > index then index = w end
  local c = 0
  if w == index then c = tonumber(h[2]) or 0 end
  local reset = (index + 1) * window - now
  state[i] = {index, c, reset}
  if c + cost > limit then
    allowed = 0
    if cost > limit then retry = -1 elseif retry >= 0 and reset > retry then retry = reset end
  end
end
local out = {allowed, retry}
for i = 1, n do
  local limit = tonumber(ARGV[2 * i + 1])
  local window = tonumber(ARGV[2 * i + 2])
  local s = state[i]
  local c = s[2]
  if allowed == 1 then
    c = c + cost
    redis.call('HSET', KEYS[i], 'w', string.format('%.17g', s[1]), 'c', string.format('%.17g', c))
    redis.call('PEXPIRE', KEYS[i], math.ceil((s[3] + window) / 1000))
  end
  -- a hit (ratelimit_fixed_window_adjust.lua) may have counted past the limit
  out[2 * i + 1] = math.max(limit - c, 0)
  out[2 * i + 2] = s[3]
end
return out
