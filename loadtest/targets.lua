-- wrk: requests spread over loadtest/dataset.py's targets ("host path" lines,
-- from the file named by TARGETS), each with a phone browser's User-Agent.
-- Reports p50/p90/p99/p99.9 and any answer that is not a redirect.
local targets = {}
local file = assert(io.open(os.getenv("TARGETS"), "r"))
for line in file:lines() do
  local host, path = line:match("^(%S+) (%S+)$")
  if host then targets[#targets + 1] = { host, path } end
end
file:close()
local ua = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
local i = 0
local unexpected = 0

init = function(args)
  math.randomseed(os.time())
  i = math.random(1, #targets)
end

request = function()
  i = i % #targets + 1
  local t = targets[i]
  return wrk.format("GET", t[2], { ["Host"] = t[1], ["User-Agent"] = ua })
end

response = function(status, headers, body)
  if status ~= 302 then unexpected = unexpected + 1 end
end

done = function(summary, latency, requests)
  io.write(string.format("LATENCY_US p50=%d p90=%d p99=%d p999=%d\n",
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9)))
  io.write(string.format("REQUESTS %d ERRORS %d\n", summary.requests,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout))
end
