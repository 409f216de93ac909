-- wrk script for tests/bench/run.  wrk ... URL -- MODE TARGET HOST [N]
--   MODE static: every request is "GET TARGET HTTP/1.1" + "Host: HOST", built once
--                (TARGET is absolute-form "http://origin.test/1k" through a proxy,
--                origin-form "/1k" straight to the origin).
--   MODE rotate: absolute-form requests for http://oI.bench.test/TARGET, I cycling
--                through 0..N-1 (N distinct origins), one Lua call per request.
-- done() prints one "BENCHJSON {...}" line that the harness parses.
local mode, n, i, target = "static", 1, 0, "/"

function init(args)
  mode = args[1] or "static"
  target = args[2] or "/"
  if mode == "static" then
    wrk.path = target
    if args[3] then wrk.headers["Host"] = args[3] end
  else
    n = tonumber(args[4] or "1")
    i = math.random(0, n - 1)
    request = function()
      i = i + 1
      if i >= n then i = 0 end
      local h = "o" .. i .. ".bench.test"
      return wrk.format("GET", "http://" .. h .. target, {Host = h})
    end
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
