-- Sliding window without admitting: peek, hit or refund, over several limits at once.
-- KEYS[i]      hash {w, c, p} of limit i (as in ratelimit_sliding_window.lua)
-- ARGV[1]      now in microseconds, or 0 for the server's TIME
-- ARGV[2]      mode: 'peek', 'hit' or 'refund'
-- ARGV[3]      cost
-- ARGV[2i+2]   limit_i;  ARGV[2i+3]  window_i in microseconds
-- peek    writes nothing: allowed / retry_after say whether `cost` would be admitted now.
-- hit     counts `cost` in every limit's current window whether or not it fits; allowed says
--         whether it fitted, retry_after is the wait for the next `cost` after this hit.
-- refund  takes `cost` back from the current window's count, then from the previous one's,
--         never below 0; allowed = 1.
-- Returns {allowed, retry_after_us (-1 = never), remaining_1, reset_after_us_1, ...}
--#include _now.lua
local mode = ARGV[2]
local cost = tonumber(ARGV[3])
local n = #KEYS
local state = {}
for i = 1, n do
  local window = tonumber(ARGV[2 * i + 3])
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
end
local function verdict()
  local allowed, retry = 1, 0
  for i = 1, n do
    local limit = tonumber(ARGV[2 * i + 2])
    local window = tonumber(ARGV[2 * i + 3])
    local s = state[i]
    local elapsed, c, p = s[2], s[3], s[4]
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
  return allowed, retry
end
local function store(i)
  local s = state[i]
  redis.call('HSET', KEYS[i], 'w', string.format('%.17g', s[1]), 'c', string.format('%.17g', s[3]),
    'p', string.format('%.17g', s[4]))
end
local allowed, retry = verdict()
if mode == 'hit' then
  for i = 1, n do
    local s = state[i]
    s[3] = s[3] + cost
    store(i)
    redis.call('PEXPIRE', KEYS[i], math.ceil((3 * tonumber(ARGV[2 * i + 3]) - s[2]) / 1000))
  end
  local _
  _, retry = verdict()
elseif mode == 'refund' then
  for i = 1, n do
    local s = state[i]
    if s[3] > 0 or s[4] > 0 then
      local c = math.max(s[3] - cost, 0)
      s[4] = math.max(s[4] - (cost - (s[3] - c)), 0)
      s[3] = c
      store(i)
    end
  end
  allowed, retry = 1, 0
end
local out = {allowed, retry}
for i = 1, n do
  local limit = tonumber(ARGV[2 * i + 2])
  local window = tonumber(ARGV[2 * i + 3])
  local s = state[i]
  local elapsed, c, p = s[2], s[3], s[4]
  local remaining = math.floor(limit - (p * (window - elapsed) / window + c) + limit * 1e-12)
  if remaining < 0 then remaining = 0 end
  local reset = 0
  if c > 0 then reset = 2 * window - elapsed elseif p > 0 then reset = window - elapsed end
  out[2 * i + 1] = remaining
  out[2 * i + 2] = reset
end
return out
