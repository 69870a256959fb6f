-- wrk script: a mix of the sample links' clicks, each with its Host header and a
-- mobile browser's User-Agent, so every request is a tracked click with an event.
local clicks = {
  { host = "acme.sjv.io",       path = "/c/1234/5678/9012?subId1=wrk&color=red" },
  { host = "acme.sjv.io",       path = "/c/2345/5679/9012" },
  { host = "acme.pxf.io",       path = "/janes-picks" },
  { host = "acmeradio.example", path = "/radio" },
}
local ua = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
local i = 0

request = function()
  i = i % #clicks + 1
  local click = clicks[i]
  return wrk.format("GET", click.path, { ["Host"] = click.host, ["User-Agent"] = ua })
end

-- Count anything that is not a redirect: the run is void if there are any.
local unexpected = 0
response = function(status, headers, body)
  if status ~= 302 then unexpected = unexpected + 1 end
end

done = function(summary, latency, requests)
  io.write(string.format("non-redirect responses in this thread: %d\n", unexpected))
end
