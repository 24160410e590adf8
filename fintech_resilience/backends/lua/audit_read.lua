-- Read audit entries in order, for verification.
-- KEYS[1]  the stream
-- ARGV     now_us (unused), after (an entry id, exclusive; '-' for the first), count
-- Returns  a flat list {id, record, prev_hash, hash, id, ...}; a missing field reads as ''
local start = ARGV[2]
if start ~= '-' then start = '(' .. start end
local entries = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', tonumber(ARGV[3]))
local out = {}
for _, entry in ipairs(entries) do
  local record, prev, hash = '', '', ''
  local fields = entry[2]
  for i = 1, #fields, 2 do
    local name = fields[i]
    if name == 'record' then record = fields[i + 1]
    elseif name == 'prev_hash' then prev = fields[i + 1]
    elseif name == 'hash' then hash = fields[i + 1] end
  end
  out[#out + 1] = entry[1]
  out[#out + 1] = record
  out[#out + 1] = prev
  out[#out + 1] = hash
end
return out
