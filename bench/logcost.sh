#!/usr/bin/env bash
# Reports what the access log costs per line and what the gateway costs per
# request, in callgrind instructions (stable where timings are not), and the
# size of the release binary. The gateway measured is build/ssegate-full: the
# release binary before stripping, so callgrind can name log_access.
# Per request: (I(600)-I(100))/500 on one keep-alive connection, as bench/run.sh.
# Per log line: log_access's inclusive cost over its calls, in the same runs.
# Every process it starts listens on 127.0.0.1 and is stopped by PID.
# Usage: bench/logcost.sh [json|text, default json]
set -u
cd "$(dirname "$0")/.."
FORMAT=${1:-json}
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

command -v valgrind >/dev/null || { echo "logcost needs valgrind: apt-get install valgrind"; exit 1; }
make -s ssegate build/ssegate-full tools/mock-upstream >"$work/make.out" 2>&1 || { cat "$work/make.out"; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

tools/mock-upstream --listen 127.0.0.1:0 --chunks 16 >"$work/mock.out" 2>"$work/mock.err" &
pids+=($!)
for _ in $(seq 50); do grep -q LISTEN "$work/mock.out" && break; sleep 0.1; done
MOCK=$(sed -n 's/^LISTEN 127.0.0.1:\([0-9]*\).*/\1/p' "$work/mock.out")
[ -n "$MOCK" ] || { echo "mock did not start"; exit 1; }

# Sums, over a callgrind profile, the instructions of the whole run and the
# inclusive instructions and calls of log_access; prints "total incl calls".
profile_sums() {
    python3 - "$1" <<'PY'
import re, sys
names, total, incl, calls = {}, 0, 0, 0
pending = None  # a call to log_access whose cost is on the next line
target = None
for line in open(sys.argv[1], encoding="latin-1"):
    if line.startswith("summary:"):
        total = int(line.split()[1])
    m = re.match(r"c?fn=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
    if m:
        if m.group(2):
            names[m.group(1)] = m.group(2)
        if line.startswith("cfn="):
            target = names.get(m.group(1))
        continue
    if line.startswith("calls="):
        if target == "log_access":
            calls += int(line.split()[0][6:])
            pending = True
        continue
    if pending:
        incl += int(line.split()[1])
        pending = None
print(total, incl, calls)
PY
}

# COUNT STREAM → "total incl calls" for one gateway run of COUNT requests.
run() {
    local port pid
    port=$(free_port)
    OPENAI_API_KEY=bench-key valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
        build/ssegate-full --listen "127.0.0.1:$port" --upstream "http://127.0.0.1:$MOCK/v1" \
        --log-format "$FORMAT" 2>"$work/gw.err" &
    pid=$!
    pids+=($pid)
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/ping" >/dev/null && break; sleep 0.1; done
    python3 bench/sequential.py "$port" "$1" "$2" || { cat "$work/gw.err"; exit 1; }
    kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    profile_sums "$work/cg.out"
    rm -f "$work/cg.out"
}

echo "$(make -s size) ($(stat -c %s ssegate) bytes)"
echo "callgrind, --log-format $FORMAT, sequential requests on one keep-alive connection"
echo "mode      instr/request  log_access instr/line"
for stream in plain stream; do
    read -r t1 l1 c1 < <(run 100 $stream)
    read -r t6 l6 c6 < <(run 600 $stream)
    per_req=$(( (t6 - t1) / 500 ))
    per_line=$(( c6 > 0 ? l6 / c6 : 0 ))
    printf "%-9s %14s %23s\n" "$stream" "$per_req" "$per_line"
done
