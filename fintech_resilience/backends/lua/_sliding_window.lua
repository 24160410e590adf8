-- Sliding window over the hash {w = window index, c = current count, p = previous count} of a
-- limit: two clock-aligned counters, the previous one weighted by its overlap with the window
-- that ends `now`. One limit's steps for ratelimit_sliding_window.lua and its adjust twin (see
-- _ratelimit.lua). Uses `now` (_now.lua).
local sliding_window = {}
-- {index, elapsed, c, p, limit, window}: the counts rolled forward to the window `now` is in;
-- the limit's parameters are its limit and its window in microseconds
function sliding_window.read(key, limit, window)
  local index = math.floor(now / window)
  local elapsed = now - index * window
  local h = redis.call('HMGET', key, 'w', 'c', 'p')
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
  return {index = index, elapsed = elapsed, c = c, p = p, limit = limit, window = window}
end
function sliding_window.wait(s, cost)
  local limit, window, elapsed, c, p = s.limit, s.window, s.elapsed, s.c, s.p
  local estimate = p * (window - elapsed) / window + c
  if estimate + cost > limit + limit * 1e-12 then
    local wait
    if cost > limit then
      wait = -1
    elseif c + cost <= limit then
      wait = math.ceil(window - (limit - c - cost) * window / p - elapsed)
    else
      wait = math.ceil((window - elapsed) + (window - (limit - cost) * window / c))
    end
    if wait == 0 then wait = 1 end
    return wait
  end
  return nil
end
-- writes state `s`, leaving the key's expiry as it is
local function sliding_store(key, s)
  redis.call('HSET', key, 'w', string.format('%.17g', s.index), 'c', string.format('%.17g', s.c),
    'p', string.format('%.17g', s.p))
end
-- counts `cost` in the current window; the key lives one window longer than the two it
-- describes (late-arriving stamped requests)
function sliding_window.take(key, s, cost)
  s.c = s.c + cost
  sliding_store(key, s)
  redis.call('PEXPIRE', key, math.ceil((3 * s.window - s.elapsed) / 1000))
end
sliding_window.hit = sliding_window.take
-- takes `cost` back from the current window's count, then from the previous one's, never below 0
function sliding_window.refund(key, s, cost)
  if s.c > 0 or s.p > 0 then
    local c = math.max(s.c - cost, 0)
    s.p = math.max(s.p - (cost - (s.c - c)), 0)
    s.c = c
    sliding_store(key, s)
  end
end
function sliding_window.reply(s)
  local limit, window, elapsed, c, p = s.limit, s.window, s.elapsed, s.c, s.p
  local remaining = math.floor(limit - (p * (window - elapsed) / window + c) + limit * 1e-12)
  if remaining < 0 then remaining = 0 end
  local reset = 0
  if c > 0 then reset = 2 * window - elapsed elseif p > 0 then reset = window - elapsed end
  return remaining, reset
end
