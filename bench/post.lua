-- wrk: the same chat request for every connection; BENCH_STREAM=1 streams.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local stream = os.getenv("BENCH_STREAM") == "1" and "true" or "false"
wrk.body = '{"model":"bench","stream":' .. stream .. ',"messages":[{"role":"user","content":"hi"}]}'
