-- GCRA, the same function as `decide` in gcra.rs (keep the two in step).
-- KEYS[1]: the bucket; ARGV[1]: emission interval T in microseconds; ARGV[2]: the limit N.
-- Returns {allowed (0|1), remaining, reset_after µs, retry_after µs}.
-- The clock is the Redis server's, so gateway replicas with skewed clocks agree.
if redis.replicate_commands then redis.replicate_commands() end -- Redis < 5: TIME, then write
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local interval = tonumber(ARGV[1])
local tolerance = interval * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then
  tat = now
end
local new_tat = tat + interval
local ahead = new_tat - now
if ahead <= tolerance then
  -- The bucket is full again (= absent) at new_tat: expire it then.
  redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil(ahead / 1000))
  return {1, math.floor((tolerance - ahead) / interval), ahead, 0}
end
return {0, 0, tat - now, ahead - tolerance}
