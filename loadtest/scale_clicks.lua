-- wrk script: tracking clicks spread over the links of loadtest/gen_links.py
-- (host brand{i % 1000}.sjv.io, ad i, campaign 9000 + i % 50), for a map of N links.
local n = tonumber(os.getenv("LINKS") or "1000000")
local ua = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
math.randomseed(42)

request = function()
  local i
  repeat
    i = math.random(0, n - 1001)
  until i % 50 ~= 49 and i % 1000 ~= 999
  local path = string.format("/c/%d/%d/%d", i % 5000, i, 9000 + i % 50)
  return wrk.format("GET", path, { ["Host"] = string.format("brand%d.sjv.io", i % 1000), ["User-Agent"] = ua })
end

local unexpected = 0
response = function(status, headers, body)
  if status ~= 302 then unexpected = unexpected + 1 end
end

done = function(summary, latency, requests)
  io.write(string.format("non-redirect responses in this thread: %d\n", unexpected))
end
