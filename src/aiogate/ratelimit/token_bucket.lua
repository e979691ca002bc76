-- aiogate rate limits: the twin of aiogate/ratelimit/bucket.py (same maths, same order of
-- operations, so both round alike). Checks every limit of a request atomically and consumes one
-- request from each only when all of them admit it.
--
-- KEYS[i]  one hash per (limit, dimension value): fields a, b, c (see bucket.py)
-- ARGV[1]  "now" in seconds, or "" to use the Redis server's TIME (the normal case: one clock
--          for every gateway instance)
-- ARGV[2+3(i-1)..]  per key: algorithm (0 token bucket, 1 sliding window), limit, window (s)
-- Returns {admitted (0/1), then per key: remaining, reset, retry_after}; the two delays are
-- strings ("%.17g") because Redis truncates Lua numbers to integers.

local now
if ARGV[1] == "" then
  local t = redis.call("TIME")
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[1])
end

local function estimate(window, index, current, previous)
  local elapsed = (now - index * window) / window
  if elapsed < 0 then
    elapsed = 0
  elseif elapsed > 1 then
    elapsed = 1
  end
  return previous * (1 - elapsed) + current
end

local n = #KEYS
local algos, limits, windows, sa, sb, sc, ok = {}, {}, {}, {}, {}, {}, {}
local all = true
for i = 1, n do
  local base = 2 + (i - 1) * 3
  local algorithm = tonumber(ARGV[base])
  local limit = tonumber(ARGV[base + 1])
  local window = tonumber(ARGV[base + 2])
  algos[i], limits[i], windows[i] = algorithm, limit, window
  local st = redis.call("HMGET", KEYS[i], "a", "b", "c")
  local a, b, c = tonumber(st[1]), tonumber(st[2]), tonumber(st[3])
  local fresh = a == nil or b == nil or c == nil
  if algorithm == 0 then
    local tokens = limit
    if not fresh then
      local elapsed = now - b
      if elapsed < 0 then
        elapsed = 0
      end
      tokens = a + elapsed * limit / window
      if tokens > limit then
        tokens = limit
      end
    end
    sa[i], sb[i], sc[i] = tokens, now, 0
    ok[i] = tokens >= 1
  else
    local index = math.floor(now / window)
    local current, previous = 0, 0
    if not fresh then
      if index <= a then
        index, current, previous = a, b, c
      elseif index == a + 1 then
        previous = b
      end
    end
    sa[i], sb[i], sc[i] = index, current, previous
    ok[i] = estimate(window, index, current, previous) + 1 <= limit
  end
  if not ok[i] then
    all = false
  end
end

local out = {all and 1 or 0}
for i = 1, n do
  local algorithm, limit, window = algos[i], limits[i], windows[i]
  if all then
    if algorithm == 0 then
      sa[i] = sa[i] - 1
    else
      sb[i] = sb[i] + 1
    end
  end
  local remaining, reset, retry
  if algorithm == 0 then
    local tokens = sa[i]
    reset = (limit - tokens) * window / limit
    retry = 0
    if not ok[i] then
      retry = (1 - tokens) * window / limit
    end
    remaining = math.floor(tokens)
  else
    local index, current, previous = sa[i], sb[i], sc[i]
    remaining = math.floor(limit - estimate(window, index, current, previous))
    if current > 0 then
      reset = (index + 2) * window - now
    elseif previous > 0 then
      reset = (index + 1) * window - now
    else
      reset = 0
    end
    retry = 0
    if not ok[i] then
      local at
      if current <= limit - 1 and previous > 0 then
        at = index * window + window * (1 - (limit - 1 - current) / previous)
      else
        at = (index + 1) * window + window * (1 - (limit - 1) / current)
      end
      retry = at - now
      if retry < 0 then
        retry = 0
      end
    end
  end
  if remaining < 0 then
    remaining = 0
  end
  local ttl = window
  if algorithm == 1 then
    ttl = 2 * window
  end
  redis.call("HSET", KEYS[i], "a", string.format("%.17g", sa[i]), "b",
    string.format("%.17g", sb[i]), "c", string.format("%.17g", sc[i]))
  redis.call("PEXPIRE", KEYS[i], math.ceil(ttl * 1000) + 1000)
  out[#out + 1] = remaining
  out[#out + 1] = string.format("%.17g", reset)
  out[#out + 1] = string.format("%.17g", retry)
end
return out
