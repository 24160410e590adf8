-- Sliding window (two clock-aligned counters, the previous one weighted by its overlap).
-- Several limits checked and consumed all-or-nothing.
-- KEYS[i]      hash {w = window index, c = current count, p = previous count} of limit i
-- ARGV[1]      now in microseconds, or 0 for the server's TIME
-- ARGV[2]      cost
-- ARGV[2i+1]   limit_i
-- ARGV[2i+2]   window_i in microseconds
-- Keys live one window longer than the two they describe (late-arriving stamped requests).
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
  local elapsed = now - index * window
  local h = redis.call('HMGET', KEYS[i], 'w', 'c', 'p')
  local w = tonumber(h[1])
  -- a request stamped in an older window than the stored one is judged at the newer one's start
  if w and w > index then
    index = w
    elapsed = 0
  end
  local c = tonumber(h[2]) or 0
  local p = tonumber(h[3]) or 0
  if w ~= index then
    if w == index - 1 then p = c else p = 0 end
    c = 0
  end
  state[i] = {index, elapsed, c, p}
  local estimate = p * (window - elapsed) / window + c
  if estimate + cost > limit + limit * 1e-12 then
    allowed = 0
    local wait
    if cost > limit then
      wait = -1
    elseif c + cost <= limit then
      wait = math.ceil(window - (limit - c - cost) * window / p - elapsed)
    else
      wait = math.ceil((window - elapsed) + (window - (limit - cost) * window / c))
    end
    if wait == 0 then wait = 1 end
    if wait < 0 then retry = -1 elseif retry >= 0 and wait > retry then retry = wait end
  end
end
local out = {allowed, retry}
for i = 1, n do
  local limit = tonumber(ARGV[2 * i + 1])
  local window = tonumber(ARGV[2 * i + 2])
  local s = state[i]
  local elapsed, c, p = s[2], s[3], s[4]
  if allowed == 1 then
    c = c + cost
    redis.call('HSET', KEYS[i], 'w', string.format('%.17g', s[1]), 'c', string.format('%.17g', c),
      'p', string.format('%.17g', p))
    redis.call('PEXPIRE', KEYS[i], math.ceil((3 * window - elapsed) / 1000))
  end
  local remaining = math.floor(limit - (p * (window - elapsed) / window + c) + limit * 1e-12)
  if remaining < 0 then remaining = 0 end
  local reset = 0
  if c > 0 then reset = 2 * window - elapsed elseif p > 0 then reset = window - elapsed end
  out[2 * i + 1] = remaining
  out[2 * i + 2] = reset
end
return out
