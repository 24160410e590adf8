-- How a rate-limit script applies its algorithm to every limit of KEYS in one call. `alg` is the
-- table of one limit's steps that _gcra.lua, _sliding_window.lua or _fixed_window.lua defines;
-- `s` is a limit's state, which the steps update in place:
--   alg.read(key, a, b)       the state of the limit stored at `key`, with parameters a and b
--   alg.wait(s, cost)         nil when `cost` fits now, else the microseconds until it does
--                             (-1: never)
--   alg.take(key, s, cost)    consume an admitted `cost` and store it
--   alg.hit(key, s, cost)     consume `cost` whether or not it fits, and store it
--   alg.refund(key, s, cost)  give `cost` back and store it
--   alg.reply(s)              remaining, reset_after_us
-- `read_limits(alg, offset)`: every limit's state, limit i's parameters at ARGV[offset + 2i] and
-- ARGV[offset + 2i + 1].
local function read_limits(alg, offset)
  local state = {}
  for i = 1, #KEYS do
    state[i] = alg.read(KEYS[i], tonumber(ARGV[offset + 2 * i]), tonumber(ARGV[offset + 2 * i + 1]))
  end
  return state
end
-- `verdict(alg, state, cost)`: whether `cost` fits every limit now (1 or 0), and the longest
-- wait until it does (-1: never).
local function verdict(alg, state, cost)
  local allowed, retry = 1, 0
  for i = 1, #state do
    local wait = alg.wait(state[i], cost)
    if wait then
      allowed = 0
      if wait < 0 then retry = -1 elseif retry >= 0 and wait > retry then retry = wait end
    end
  end
  return allowed, retry
end
-- `reply(alg, state, allowed, retry)`: {allowed, retry_after_us (-1 = never), remaining_1,
-- reset_after_us_1, ...}
local function reply(alg, state, allowed, retry)
  local out = {allowed, retry}
  for i = 1, #state do
    out[2 * i + 1], out[2 * i + 2] = alg.reply(state[i])
  end
  return out
end
-- `acquire(alg)`: ARGV[2] = cost, admitted under every limit or none (ratelimit_<alg>.lua).
local function acquire(alg)
  local cost = tonumber(ARGV[2])
  local state = read_limits(alg, 1)
  local allowed, retry = verdict(alg, state, cost)
  if allowed == 1 then
    for i = 1, #KEYS do
      alg.take(KEYS[i], state[i], cost)
    end
  end
  return reply(alg, state, allowed, retry)
end
-- `adjust(alg)`: ARGV[2] = mode, ARGV[3] = cost (ratelimit_<alg>_adjust.lua). 'peek' writes
-- nothing; 'hit' consumes `cost` under every limit and answers the wait for the next `cost`;
-- 'refund' gives `cost` back and answers allowed = 1.
local function adjust(alg)
  local mode = ARGV[2]
  local cost = tonumber(ARGV[3])
  local state = read_limits(alg, 2)
  local allowed, retry = verdict(alg, state, cost)
  if mode == 'hit' then
    for i = 1, #KEYS do
      alg.hit(KEYS[i], state[i], cost)
    end
    local _
    _, retry = verdict(alg, state, cost)
  elseif mode == 'refund' then
    for i = 1, #KEYS do
      alg.refund(KEYS[i], state[i], cost)
    end
    allowed, retry = 1, 0
  end
  return reply(alg, state, allowed, retry)
end
