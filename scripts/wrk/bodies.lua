-- wrk script: POST every body of a bodies file in turn (distinct inputs for miss-path figures,
-- one body repeated for cache hits), and print a machine-readable result line at the end.
--
--   wrk -t1 -c64 -d5s --latency -s scripts/wrk/bodies.lua http://127.0.0.1:8000 \
--       -- FILE CONTENT_TYPE ROUTE [START]
--
-- FILE: for each body, its byte length in ASCII, a newline, then the bytes (written by
-- service.bench.bodies.write_bodies). Requests are formatted once, in init, not per request.
-- START: the body to begin with, so that successive runs continue the cycle instead of
-- re-sending the first bodies, whose answers the previous run may have left in a cache.

local prepared = {}
local position = 0

function init(args)
  local file_name, content_type, route = args[1], args[2], args[3] or "/predict"
  local file = assert(io.open(file_name, "rb"), "cannot open bodies file " .. tostring(file_name))
  while true do
    local line = file:read("*l")
    if not line or line == "" then break end
    local body = file:read(tonumber(line))
    prepared[#prepared + 1] = wrk.format("POST", route, {["Content-Type"] = content_type}, body)
  end
  file:close()
  assert(#prepared > 0, "no bodies in " .. file_name)
  position = (tonumber(args[4]) or 0) % #prepared
end

function request()
  position = position % #prepared + 1
  return prepared[position]
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    "WRK_RESULT {\"requests\": %d, \"duration_us\": %d, \"bytes\": %d, " ..
    "\"connect_errors\": %d, \"read_errors\": %d, \"write_errors\": %d, " ..
    "\"status_errors\": %d, \"timeouts\": %d, \"p50_us\": %d, \"p90_us\": %d, " ..
    "\"p99_us\": %d, \"max_us\": %d, \"mean_us\": %.1f}\n",
    summary.requests, summary.duration, summary.bytes,
    errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
