-- wrk script: POST one observation per request to /v1/streams/<id>/observations, each for a random stream.
-- Usage: wrk -t1 -c16 -d4s -s bench/observe.lua http://127.0.0.1:PORT -- STREAMS INPUTS [PATH]
--   STREAMS: streams named bench-00000.. ; INPUTS: features per observation;
--   PATH: "observe" (default), "get" (GET /v1/streams/<id>), "predict" (POST .../predict), "healthz".
-- Requests are made once in init (1,024 of them, cycled), so wrk spends no Lua time per request.

local requests = {}
local count = 1024
local at = 0

function init(args)
  local streams = tonumber(args[1] or "1000")
  local inputs = tonumber(args[2] or "16")
  local kind = args[3] or "observe"
  math.randomseed(7)
  local headers = { ["Content-Type"] = "application/json" }
  for i = 1, count do
    local name = string.format("bench-%05d", math.random(0, streams - 1))
    local x = {}
    for j = 1, inputs do
      x[j] = string.format("%.6f", math.random() * 2 - 1)
    end
    local xs = "[" .. table.concat(x, ",") .. "]"
    if kind == "get" then
      requests[i] = wrk.format("GET", "/v1/streams/" .. name)
    elseif kind == "healthz" then
      requests[i] = wrk.format("GET", "/healthz")
    elseif kind == "predict" then
      requests[i] = wrk.format("POST", "/v1/streams/" .. name .. "/predict", headers, '{"x":' .. xs .. '}')
    else
      local body = '{"x":' .. xs .. ',"y":' .. string.format("%.6f", math.random() * 2 - 1) .. '}'
      requests[i] = wrk.format("POST", "/v1/streams/" .. name .. "/observations", headers, body)
    end
  end
end

function request()
  at = at % count + 1
  return requests[at]
end

function done(summary, latency, requests)
  io.write(string.format("WRK_RESULT %d %d %.1f %.1f %d %d\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout, 0))
end
