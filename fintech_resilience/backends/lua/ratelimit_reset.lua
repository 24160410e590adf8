-- Forget a rate-limit key's state under every limit given (any algorithm): the key starts over.
-- KEYS[i]      the state of limit i
-- ARGV[1]      unused (the time, by convention)
-- Returns nothing: whether a key still existed depends on its TTL, which runs on the server's
-- clock, not on the time a caller passes.
redis.call('DEL', unpack(KEYS))
return nil
