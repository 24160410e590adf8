-- `lease_refusal(key, owner)`: nil while `owner` holds the live lease of the in-progress record
-- `key`; else the refusal to return, {0, 1} not the owner or {0, 2} lease expired. Uses `now`.
local function lease_refusal(key, owner)
  local r = redis.call('HMGET', key, 'st', 'own', 'lu')
  if r[1] ~= 'p' or r[2] ~= owner then
    return {0, 1}
  end
  if tonumber(r[3]) <= now then
    return {0, 2}
  end
  return nil
end
