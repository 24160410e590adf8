-- Append one audit record to a bounded stream; optionally hash-chained (compare-and-append).
-- KEYS[1]  the stream (entries: record, and when chained prev_hash + hash)
-- ARGV     now_us (0 = TIME and a server-generated id), maxlen, ttl_ms, chained (0/1),
--          expected_prev, record (canonical JSON), hash
-- Returns  {1, id} when appended; {0, head} when chained and the newest entry's hash is not
--          expected_prev (another writer appended first: recompute over head and call again)
local now = tonumber(ARGV[1])
local chained = ARGV[4] == '1'
local head = ''
local last_ms = -1
local last_seq = -1
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if last[1] then
  local id = last[1][1]
  local dash = string.find(id, '-', 1, true)
  last_ms = tonumber(string.sub(id, 1, dash - 1))
  last_seq = tonumber(string.sub(id, dash + 1))
  local fields = last[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 'hash' then head = fields[i + 1] end
  end
end
if chained and head ~= ARGV[5] then
  return {0, head}
end
local id = '*'
if now ~= 0 then
  -- the same id Redis would generate at this time: <ms>-<seq>, never below the newest entry
  local ms = math.floor(now / 1000)
  local seq = 0
  if ms <= last_ms then
    ms = last_ms
    seq = last_seq + 1
  end
  id = string.format('%.0f-%.0f', ms, seq)
end
local added
if chained then
  added = redis.call('XADD', KEYS[1], 'MAXLEN', tonumber(ARGV[2]), id, 'record', ARGV[6],
                     'prev_hash', ARGV[5], 'hash', ARGV[7])
else
  added = redis.call('XADD', KEYS[1], 'MAXLEN', tonumber(ARGV[2]), id, 'record', ARGV[6])
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return {1, added}
