-- wrk: action reports to the sample brand acme (examples/links.ndjson).
-- MODE=api: POST /v1/actions, BATCH (default 100) sales per request, keyed with
-- the development action key; MODE=pixel: GET /v1/px, one sale in the query.
-- Every order id differs. Reports latency and the answers that were not 202/200.
local mode = os.getenv("MODE") or "api"
local batch = tonumber(os.getenv("BATCH") or "100")
local click_id = "01M7YWAAP7ZPKC5E0C3DS3S2KS"
local ua = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
local thread_id, n = 0, 0

init = function(args)
  math.randomseed(os.time())
  thread_id = math.random(1, 1000000000)
end

request = function()
  n = n + 1
  if mode == "pixel" then
    local path = string.format(
      "/v1/px?event=sale&order_id=P-%d-%d&currency=USD&sku=SKU-1&price=29.95&qty=2&click_id=%s&promo_code=JANE10",
      thread_id, n, click_id)
    return wrk.format("GET", path, { ["Host"] = "acme.sjv.io", ["User-Agent"] = ua })
  end
  local lines = {}
  for k = 1, batch do
    lines[k] = string.format(
      '{"event":"sale","order_id":"O-%d-%d-%d","currency":"USD","items":[{"sku":"SKU-1","price":"29.95","quantity":2}],"click_id":"%s","promo_code":"jane10"}',
      thread_id, n, k, click_id)
  end
  return wrk.format("POST", "/v1/actions", {
    ["Host"] = "acme.sjv.io",
    ["Authorization"] = "Bearer acme-dev-action-key",
    ["Content-Type"] = "application/x-ndjson",
  }, table.concat(lines, "\n"))
end

done = function(summary, latency, requests)
  io.write(string.format("LATENCY_US p50=%d p90=%d p99=%d p999=%d\n",
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9)))
  io.write(string.format("REQUESTS %d ERRORS %d\n", summary.requests,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout))
end
