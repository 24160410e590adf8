-- GCRA (generic cell rate algorithm) over the theoretical arrival time (TAT) of a limit, in
-- microseconds. One limit's steps for ratelimit_gcra.lua and its adjust twin (see
-- _ratelimit.lua). Uses `now` (_now.lua).
local gcra = {}
-- {tat, interval, tau}: the TAT no earlier than `now`; the limit's parameters are its emission
-- interval and its tolerance
function gcra.read(key, interval, tau)
  local tat = tonumber(redis.call('GET', key) or 0)
  if tat < now then tat = now end
  return {tat = tat, interval = interval, tau = tau}
end
-- the wait is rounded to the nearest microsecond (rounding each limit's wait and taking the
-- longest is rounding the longest: the rounding never reorders two waits)
function gcra.wait(s, cost)
  local increment = s.interval * cost
  if increment > s.tau then return -1 end
  -- 1 microsecond of tolerance absorbs the rounding of fractional emission intervals
  local wait = (s.tat - now) + increment - s.tau
  if wait >= 1 then return math.floor(wait + 0.5) end
  return nil
end
-- writes `tat`; the key lives 1 s past the time the bucket is full again, so a request stamped
-- by a client clock that reaches Redis late still finds the state it was stamped against
local function gcra_store(key, tat)
  redis.call('SET', key, string.format('%.17g', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
end
function gcra.take(key, s, cost)
  s.tat = s.tat + s.interval * cost
  gcra_store(key, s.tat)
end
-- the debt a hit leaves is capped at twice the tolerance: a key over its limit is refused for at
-- most the time its bucket takes to refill
function gcra.hit(key, s, cost)
  s.tat = math.min(s.tat + s.interval * cost, now + 2 * s.tau)
  gcra_store(key, s.tat)
end
-- never beyond a full bucket (no state left)
function gcra.refund(key, s, cost)
  local tat = s.tat - s.interval * cost
  if tat > now then
    gcra_store(key, tat)
  else
    tat = now
    redis.call('DEL', key)
  end
  s.tat = tat
end
function gcra.reply(s)
  local remaining = math.floor((s.tau - (s.tat - now)) / s.interval + 1e-6)
  if remaining < 0 then remaining = 0 end
  return remaining, math.floor(s.tat - now + 0.5)
end
