-- wrk script for bench/run.sh: POST with an Idempotency-Key header, and a machine-readable summary.
-- (Extends ../shared/bench/idem.lua with the `mix` mode, BODY_BYTES and a few more summary fields.)
--
-- Environment (all optional):
--   IDEM_MODE     unique (default): a fresh key per request -> every request is a first execution
--                 fixed:            the same key on every request -> everything after the first is a replay
--                 mix:              80 % fresh keys, 20 % retries of a key this thread sent 256..1279
--                                   requests earlier (completed by then: a replay)
--                 none:             no Idempotency-Key header (plain POST; the gateway bypasses it)
--   IDEM_KEY      the key used in fixed mode (default: "bench-fixed-" .. a per-run random suffix)
--   IDEM_PREFIX   prefix of unique keys (default: a per-run random prefix, so re-runs never collide)
--   BODY_BYTES    request body size in bytes: a JSON payment padded to exactly this size
--                 (default: the ~80-byte JSON payment below)
--   EXTRA_HEADERS extra headers, "Name: value" pairs separated by "|" (e.g. "Cookie: session=abc");
--                 "@/path/file" reads them from that file instead (read when wrk starts)
--   LABEL, WORKLOAD, ROUND  copied into the summary line
--
-- The request is built by request() in every mode, so the client-side cost is the same for all
-- targets. response() is deliberately not defined (it would make wrk hand every response to Lua).
-- done() prints one line:  WRKJSON {"label":..., "rps":..., "p50_ms":..., ...}

local mode = os.getenv("IDEM_MODE") or "unique"
local label = os.getenv("LABEL") or ""
local workload = os.getenv("WORKLOAD") or mode
local round = tonumber(os.getenv("ROUND") or "0") or 0
local body_bytes = tonumber(os.getenv("BODY_BYTES") or "0") or 0

local body = '{"amount":1999,"currency":"usd","source":"tok_visa","description":"bench"}'
if body_bytes > 0 then
  local head = '{"amount":1999,"currency":"usd","source":"tok_visa","pad":"'
  local tail = '"}'
  local pad = body_bytes - #head - #tail
  if pad < 0 then
    body = string.rep(" ", body_bytes)      -- too small for the JSON frame: spaces
  else
    body = head .. string.rep("x", pad) .. tail
  end
end

math.randomseed(os.time() + math.floor(os.clock() * 1e6))
local run_prefix = os.getenv("IDEM_PREFIX") or string.format("k%08x%06x", os.time(), math.random(0, 0xffffff))
local fixed_key = os.getenv("IDEM_KEY") or ("bench-fixed-" .. run_prefix)

local thread_counter = 0

function setup(thread)
  thread_counter = thread_counter + 1
  thread:set("tid", thread_counter)
end

local headers = {}
local counter = 0
local prefix

function init(args)
  headers["Content-Type"] = "application/json"
  local extra = os.getenv("EXTRA_HEADERS")
  if extra and string.sub(extra, 1, 1) == "@" then
    local f = assert(io.open(string.sub(extra, 2), "r"))
    extra = f:read("*a"):gsub("[\r\n]+", "|")
    f:close()
  end
  if extra and extra ~= "" then
    for pair in string.gmatch(extra, "[^|]+") do
      local name, value = string.match(pair, "^%s*([^:]+):%s*(.-)%s*$")
      if name then headers[name] = value end
    end
  end
  prefix = run_prefix .. "-t" .. tostring(tid or 0) .. "-"
  math.randomseed(os.time() + (tid or 0) * 7919)
  if mode == "fixed" then
    headers["Idempotency-Key"] = fixed_key
  end
end

function request()
  if mode == "unique" then
    counter = counter + 1
    headers["Idempotency-Key"] = prefix .. counter
  elseif mode == "mix" then
    -- 20 % retries of an earlier key of this thread, far enough back that it has completed
    if counter > 1280 and math.random() < 0.2 then
      headers["Idempotency-Key"] = prefix .. (counter - 256 - math.random(0, 1023))
    else
      counter = counter + 1
      headers["Idempotency-Key"] = prefix .. counter
    end
  end
  return wrk.format("POST", nil, headers, body)
end

function done(summary, latency, requests)
  local secs = summary.duration / 1e6
  local e = summary.errors
  local errs = e.connect + e.read + e.write + e.timeout
  io.write(string.format(
    'WRKJSON {"label":"%s","workload":"%s","mode":"%s","round":%d,"body_bytes":%d,"requests":%d,"duration_s":%.3f,"rps":%.1f,' ..
    '"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,"p999_ms":%.3f,"max_ms":%.3f,"mean_ms":%.3f,' ..
    '"non2xx3xx":%d,"socket_errors":%d}\n',
    label, workload, mode, round, #body, summary.requests, secs, summary.requests / secs,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency:percentile(99.9) / 1000, latency.max / 1000, latency.mean / 1000,
    e.status, errs))
end
