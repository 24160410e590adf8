-- Circuit breaker: record the outcome of one protected call and make the transition it causes.
-- KEYS[1]  hash of the breaker. Fields: st (0 CLOSED, 1 OPEN, 2 HALF_OPEN), ov (override: 0 none,
--          3 FORCED_OPEN, 4 DISABLED, 5 METRICS_ONLY), gen (+1 on every transition), until (end of
--          the break, us), trips (consecutive trips, for break growth), n/f/s (calls, failures,
--          slow calls in the window), seq (next count-window slot), last (newest time bucket),
--          r<i> (count-window slot: 1 + failure + 2 * slow), c<i>/e<i>/w<i> (time bucket i: calls,
--          failures, slow calls), hn/hf/hw (probe calls, failures, slow), probes (token=expiry;...)
-- ARGV     1 now_us (0 = TIME), 2 gen the caller saw when the call started, 3 probe token ('' =
--          none), 4 verdict (0 neutral, 1 success, 2 failure), 5 slow (0/1), 6 window kind (1 count,
--          2 time), 7 window slots, 8 bucket_us, 9 minimum_calls, 10 failure_rate,
--          11 slow_call_rate, 12 break_us, 13 break multiplier, 14 max_break_us,
--          15 half_open_calls, 16 ttl_ms
-- An outcome from an earlier generation (the call started before a transition) is not counted.
-- Returns {state, gen, retry_after_us, 1, transition_from (-1: none), calls, failures, slow}
-- The steady state (CLOSED, count window) needs no clock: `now` is read from TIME only when
-- used, and the outcome is written with one HSET.
local now = tonumber(ARGV[1])
local function clock()
  if now == 0 then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  end
  return now
end
local function num(x) return string.format('%.17g', x) end
local key = KEYS[1]
local h = redis.call('HMGET', key, 'st', 'ov', 'gen', 'until', 'trips', 'n', 'f', 's', 'seq',
                     'last', 'hn', 'hf', 'hw', 'probes')
local st = tonumber(h[1] or 0)
local ov = tonumber(h[2] or 0)
local gen = tonumber(h[3] or 0)
local untl = tonumber(h[4] or 0)
local trips = tonumber(h[5] or 0)
local n = tonumber(h[6] or 0)
local f = tonumber(h[7] or 0)
local s = tonumber(h[8] or 0)
local verdict = tonumber(ARGV[4])
local fail = 0
if verdict == 2 then fail = 1 end
local slow = tonumber(ARGV[5])
if verdict == 0 then slow = 0 end
local frate = tonumber(ARGV[10])
local srate = tonumber(ARGV[11])
local hoc = tonumber(ARGV[15])
local from = -1

local function reply()
  local state = st
  if ov ~= 0 then state = ov end
  local ra = 0
  if state == 1 and untl > clock() then ra = untl - now end
  return {state, gen, math.floor(ra + 0.5), 1, from, n, f, s}
end

-- the window and the probes are forgotten on every transition
local function transition(to)
  from = st
  if ov ~= 0 then from = ov end
  if to == 1 then
    trips = trips + 1
    local dur = tonumber(ARGV[12])
    local maxb = tonumber(ARGV[14])
    local mult = tonumber(ARGV[13])
    for _ = 2, trips do
      dur = dur * mult
      if dur >= maxb then break end
    end
    if dur > maxb then dur = maxb end
    untl = clock() + dur
  else
    trips = 0
    untl = 0
  end
  st = to
  gen = gen + 1
  n = 0
  f = 0
  s = 0
  redis.call('DEL', key)
  redis.call('HSET', key, 'st', st, 'gen', gen, 'until', num(untl), 'trips', trips)
  if ov ~= 0 then
    redis.call('HSET', key, 'ov', ov)  -- an override holds until reset: no TTL
  else
    redis.call('PEXPIRE', key, ARGV[16])
  end
end

if ov == 3 or ov == 4 or tonumber(ARGV[2]) ~= gen then return reply() end

if ov == 0 and st == 2 then
  -- HALF_OPEN: only a probe holding a permit counts; a neutral probe gives its permit back
  local token = ARGV[3]
  if token == '' or not h[14] then return reply() end
  local found = false
  local p = ''
  for tok, exp in string.gmatch(h[14], '([^=;]+)=([^;]+);') do
    if tok == token then found = true else p = p .. tok .. '=' .. exp .. ';' end
  end
  if not found then return reply() end
  local hn = tonumber(h[11] or 0)
  local hf = tonumber(h[12] or 0)
  local hw = tonumber(h[13] or 0)
  if verdict ~= 0 then
    hn = hn + 1
    hf = hf + fail
    hw = hw + slow
  end
  if hf / hoc >= frate or hw / hoc >= srate then
    transition(1)
  elseif hn >= hoc then
    transition(0)
  else
    redis.call('HSET', key, 'probes', p, 'hn', hn, 'hf', hf, 'hw', hw)
    redis.call('PEXPIRE', key, ARGV[16])
  end
  return reply()
end

if verdict == 0 or (st ~= 0 and ov ~= 5) then return reply() end

-- CLOSED (or METRICS_ONLY): count the outcome in the window
local size = tonumber(ARGV[7])
local slot
if tonumber(ARGV[6]) == 1 then
  local seq = tonumber(h[9] or 0)
  local old = tonumber(redis.call('HGET', key, 'r' .. seq) or 0)
  if old > 0 then
    n = n - 1
    f = f - (old - 1) % 2
    s = s - math.floor((old - 1) / 2)
  end
  slot = {'r' .. seq, 1 + fail + 2 * slow, 'seq', (seq + 1) % size}
else
  local b = math.floor(clock() / tonumber(ARGV[8]))
  local last = tonumber(h[10] or b)
  if b > last then
    local steps = b - last
    if steps > size then steps = size end
    for j = 1, steps do
      local i = (last + j) % size
      local old = redis.call('HMGET', key, 'c' .. i, 'e' .. i, 'w' .. i)
      n = n - tonumber(old[1] or 0)
      f = f - tonumber(old[2] or 0)
      s = s - tonumber(old[3] or 0)
      redis.call('HDEL', key, 'c' .. i, 'e' .. i, 'w' .. i)
    end
    last = b
  end
  local i = last % size
  redis.call('HINCRBY', key, 'c' .. i, 1)
  if fail == 1 then redis.call('HINCRBY', key, 'e' .. i, 1) end
  if slow == 1 then redis.call('HINCRBY', key, 'w' .. i, 1) end
  slot = {'last', num(last)}
end
n = n + 1
f = f + fail
s = s + slow
if ov == 0 and n >= tonumber(ARGV[9]) and (f / n >= frate or s / n >= srate) then
  transition(1)  -- forgets the window: the slot need not be written
else
  redis.call('HSET', key, 'st', st, 'gen', gen, 'n', n, 'f', f, 's', s, unpack(slot))
  if ov == 0 then redis.call('PEXPIRE', key, ARGV[16]) end  -- an override holds until reset
end
return reply()
