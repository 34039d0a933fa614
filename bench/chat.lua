-- wrk script for bench/run.py: POST a non-streaming chat completion.
-- Environment: BENCH_BODY (the JSON body) or BENCH_MODEL (model name), BENCH_KEY (bearer token).
-- In done() it prints "BENCH_SENT <n>": the requests wrk started writing, so that
-- sent - completed = requests still in flight when wrk stopped (used for the audit check).

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_KEY") or "bench")
wrk.body = os.getenv("BENCH_BODY") or ('{"model":"' .. (os.getenv("BENCH_MODEL") or "bench-chat")
    .. '","messages":[{"role":"user","content":"Hello, how are you?"}]}')

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   sent = 0
   req = wrk.format()
end

function request()
   sent = sent + 1
   return req
end

function done(summary, latency, requests)
   local total = 0
   for _, thread in ipairs(threads) do
      total = total + thread:get("sent")
   end
   io.write(string.format("BENCH_SENT %d\n", total))
end
