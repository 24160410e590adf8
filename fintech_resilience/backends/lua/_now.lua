-- `now`: the caller's time in microseconds (ARGV[1]), or the server's TIME when the caller
-- passed 0, so hosts with skewed clocks agree and tests can drive time.
local now = tonumber(ARGV[1])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
