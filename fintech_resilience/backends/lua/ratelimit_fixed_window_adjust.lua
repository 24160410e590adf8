-- Fixed window without admitting: peek, hit or refund, over several limits at once.
-- KEYS[i]      hash {w = window index, c = count} of limit i (as in ratelimit_fixed_window.lua)
-- ARGV[1]      now in microseconds, or 0 for the server's TIME
-- ARGV[2]      mode: 'peek', 'hit' or 'refund'
-- ARGV[3]      cost
-- ARGV[2i+2]   limit_i;  ARGV[2i+3]  window_i in microseconds
-- peek    writes nothing: allowed / retry_after say whether `cost` would be admitted now.
-- hit     counts `cost` in every limit's window whether or not it fits (the count may pass the
--         limit until the window ends); allowed says whether it fitted, retry_after is the wait
--         for the next `cost` after this hit.
-- refund  takes `cost` back from the current window's count, never below 0; allowed = 1.
-- Returns {allowed, retry_after_us (-1 = never), remaining_1, reset_after_us_1, ...}
--#include _now.lua
local mode = ARGV[2]
local cost = tonumber(ARGV[3])
local n = #KEYS
local state = {}
for i = 1, n do
  local window = tonumber(ARGV[2 * i + 3])
  local index = math.floor(now / window)
  local h = redis.call('HMGET', KEYS[i], 'w', 'c')
  local w = tonumber(h[1])
  -- a request stamped in an older window than the stored one counts against the newer window
  if w and w > index then index = w end
  local c = 0
  if w == index then c = tonumber(h[2]) or 0 end
  state[i] = {index, c, (index + 1) * window - now}
end
local function verdict()
  local allowed, retry = 1, 0
  for i = 1, n do
    local limit = tonumber(ARGV[2 * i + 2])
    local s = state[i]
    if s[2] + cost > limit then
      allowed = 0
      if cost > limit then retry = -1 elseif retry >= 0 and s[3] > retry then retry = s[3] end
    end
  end
  return allowed, retry
end
local allowed, retry = verdict()
if mode == 'hit' then
  for i = 1, n do
    local s = state[i]
    s[2] = s[2] + cost
    redis.call('HSET', KEYS[i], 'w', string.format('%.17g', s[1]), 'c', string.format('%.17g', s[2]))
    redis.call('PEXPIRE', KEYS[i], math.ceil((s[3] + tonumber(ARGV[2 * i + 3])) / 1000))
  end
  local _
  _, retry = verdict()
elseif mode == 'refund' then
  for i = 1, n do
    local s = state[i]
    if s[2] > 0 then
      s[2] = math.max(s[2] - cost, 0)
      redis.call('HSET', KEYS[i], 'c', string.format('%.17g', s[2]))
    end
  end
  allowed, retry = 1, 0
end
local out = {allowed, retry}
for i = 1, n do
  local s = state[i]
  out[2 * i + 1] = math.max(tonumber(ARGV[2 * i + 2]) - s[2], 0)
  out[2 * i + 2] = s[3]
end
return out
