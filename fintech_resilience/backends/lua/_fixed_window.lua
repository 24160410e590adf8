-- Fixed window aligned on the clock (a day starts at 00:00 UTC) over the hash {w = window index,
-- c = count} of a limit. One limit's steps for ratelimit_fixed_window.lua and its adjust twin
-- (see _ratelimit.lua). Uses `now` (_now.lua).
local fixed_window = {}
-- {index, c, reset, limit, window}: `reset` is the time until the window ends; the limit's
-- parameters are its limit and its window in microseconds
function fixed_window.read(key, limit, window)
  local index = math.floor(now / window)
  local h = redis.call('HMGET', key, 'w', 'c')
  local w = tonumber(h[1])
  -- a request stamped in an older window than the stored one counts against the newer window
  if w and w > index then index = w end
  local c = 0
  if w == index then c = tonumber(h[2]) or 0 end
  return {index = index, c = c, reset = (index + 1) * window - now, limit = limit, window = window}
end
-- the wait is the rest of the window, never negative: `now` is a whole number of microseconds
-- below 2^53, so the window's end rounds to no earlier than `now`
function fixed_window.wait(s, cost)
  if s.c + cost > s.limit then
    if cost > s.limit then return -1 end
    return s.reset
  end
  return nil
end
-- counts `cost` in the window; the key lives one window past its own, so a request stamped
-- before the boundary that reaches Redis late still counts against the window it was stamped in
function fixed_window.take(key, s, cost)
  s.c = s.c + cost
  redis.call('HSET', key, 'w', string.format('%.17g', s.index), 'c', string.format('%.17g', s.c))
  redis.call('PEXPIRE', key, math.ceil((s.reset + s.window) / 1000))
end
fixed_window.hit = fixed_window.take
-- takes `cost` back from the window's count, never below 0, leaving the key's expiry as it is
function fixed_window.refund(key, s, cost)
  if s.c > 0 then
    s.c = math.max(s.c - cost, 0)
    redis.call('HSET', key, 'c', string.format('%.17g', s.c))
  end
end
-- a hit may have counted past the limit
function fixed_window.reply(s)
  return math.max(s.limit - s.c, 0), s.reset
end
