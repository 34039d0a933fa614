-- wrk script for bench/cache.py: POST chat requests that are unique, or rotate among a few bodies,
-- and optionally count the cache's verdicts on them.
-- Environment:
--   BENCH_KEY     bearer token
--   BENCH_BODIES  one or more JSON bodies, one a line, sent in turn
--   BENCH_NONCE   replaces "@@N@@" in a body with "<nonce>-<thread>-<n>" (n counts this thread's
--                 requests): a nonce per wrk run keeps every request of every run unique
--   BENCH_COUNT   "1": read each response's `x-cache` header (hit, miss, bypass, none) and
--                 `x-cache-similarity` (a semantic hit); costs wrk some work per response
-- In done() it prints "BENCH_SENT <n>" (requests started) and, when counting,
-- "BENCH_CACHE hit=<n> semantic=<n> miss=<n> bypass=<n> none=<n>".

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_KEY") or "bench")

local threads = {}
local counter = 1

function setup(thread)
   thread:set("tid", counter)
   counter = counter + 1
   table.insert(threads, thread)
end

function init(args)
   sent = 0
   hit, semantic, miss, bypass, none = 0, 0, 0, 0, 0
   bodies = {}
   for line in string.gmatch(os.getenv("BENCH_BODIES") or "", "[^\n]+") do
      table.insert(bodies, line)
   end
   prefix = (os.getenv("BENCH_NONCE") or "run") .. "-" .. tostring(tid) .. "-"
   fixed = {}
   for i, body in ipairs(bodies) do
      if not string.find(body, "@@N@@", 1, true) then
         fixed[i] = wrk.format(nil, nil, nil, body)
      end
   end
end

function request()
   sent = sent + 1
   local i = (sent - 1) % #bodies + 1
   if fixed[i] then
      return fixed[i]
   end
   local body = string.gsub(bodies[i], "@@N@@", prefix .. sent)
   return wrk.format(nil, nil, nil, body)
end

if os.getenv("BENCH_COUNT") == "1" then
   function response(status, headers, body)
      local verdict = headers["x-cache"] or headers["X-Cache"]
      if verdict == "hit" then
         hit = hit + 1
         if headers["x-cache-similarity"] then
            semantic = semantic + 1
         end
      elseif verdict == "miss" then
         miss = miss + 1
      elseif verdict == "bypass" then
         bypass = bypass + 1
      else
         none = none + 1
      end
   end
end

function done(summary, latency, requests)
   local totals = {sent = 0, hit = 0, semantic = 0, miss = 0, bypass = 0, none = 0}
   for _, thread in ipairs(threads) do
      for name, _ in pairs(totals) do
         totals[name] = totals[name] + (thread:get(name) or 0)
      end
   end
   io.write(string.format("BENCH_SENT %d\n", totals.sent))
   if os.getenv("BENCH_COUNT") == "1" then
      io.write(string.format("BENCH_CACHE hit=%d semantic=%d miss=%d bypass=%d none=%d\n",
         totals.hit, totals.semantic, totals.miss, totals.bypass, totals.none))
   end
end
