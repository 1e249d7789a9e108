-- wrk script: replay pre-made requests, cycling through them; bench/wrk.py writes them.
-- Usage: wrk -t1 -c16 -d4s -s bench/requests.lua http://127.0.0.1:PORT -- DIR COUNT [API_KEY]
-- DIR/<i>.req (i = 1..COUNT) holds "METHOD PATH CONTENT-TYPE" on its first line and the body (if any)
-- after it.
-- Every request is formatted once in init, so wrk spends no Lua time per request.

local requests = {}
local count = 0
local at = 0

function init(args)
  local dir, n = args[1], tonumber(args[2])
  local bare = {}
  if args[3] then
    bare["Authorization"] = "Bearer " .. args[3]
  end
  for i = 1, n do
    local file = assert(io.open(dir .. "/" .. i .. ".req", "rb"))
    local text = file:read("*a")
    file:close()
    local line_end = text:find("\n", 1, true)
    local method, path, media = text:sub(1, line_end - 1):match("^(%S+) (%S+) (%S+)$")
    local body = text:sub(line_end + 1)
    if body == "" then
      requests[i] = wrk.format(method, path, bare)
    else
      local headers = { ["Content-Type"] = media, ["Authorization"] = bare["Authorization"] }
      requests[i] = wrk.format(method, path, headers, body)
    end
  end
  count = n
end

function request()
  at = at % count + 1
  return requests[at]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRK_RESULT %d %d %.1f %.1f %d\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), e.status + e.connect + e.read + e.write + e.timeout))
end
