#!/usr/bin/env bash
# Benchmarks ssegate against nginx relaying the same mock upstream, in one
# run on one machine, and reports ratios (timings here are noisy) plus
# callgrind instruction counts per request (stable). Every process it starts
# listens on 127.0.0.1 and is stopped by PID; every load is bounded in time.
# Usage: bench/run.sh [SECONDS per wrk run, default 5]
set -u
cd "$(dirname "$0")/.."
SECS=${1:-5}
CONNS=${BENCH_CONNS:-32}
CHUNKS=${BENCH_CHUNKS:-16}
work=$(mktemp -d)
pids=()
GW_EXTRA=()
SEQ_KEY=
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Sets MOCK to the port. Not called in $(...): its PID must reach `pids`.
start_mock() {
    tools/mock-upstream --listen 127.0.0.1:0 --chunks "$CHUNKS" >"$work/mock.out" 2>"$work/mock.err" &
    pids+=($!)
    for _ in $(seq 50); do grep -q LISTEN "$work/mock.out" && break; sleep 0.1; done
    MOCK=$(sed -n 's/^LISTEN 127.0.0.1:\([0-9]*\).*/\1/p' "$work/mock.out")
    [ -n "$MOCK" ] || { echo "mock did not start"; exit 1; }
}

# ssegate on PORT relaying to the mock, optionally under a wrapper (valgrind).
start_gateway() {
    local port=$1; shift
    OPENAI_API_KEY=bench-key "$@" ./ssegate --listen "127.0.0.1:$port" --upstream "http://127.0.0.1:$MOCK/v1" \
        --log-format json "${GW_EXTRA[@]}" 2>"$work/gw.err" &
    GW_PID=$!
    pids+=($GW_PID)
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/ping" >/dev/null && return; sleep 0.1; done
    echo "gateway did not start"; cat "$work/gw.err"; exit 1
}

start_nginx() {
    local port=$1; shift
    mkdir -p "$work/nginx/logs" "$work/nginx/tmp"
    cat >"$work/nginx/nginx.conf" <<CONF
worker_processes 1;
daemon off;
master_process off;
error_log $work/nginx/logs/error.log error;
pid $work/nginx/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $work/nginx/tmp;
    proxy_temp_path $work/nginx/tmp;
    upstream mock { server 127.0.0.1:$MOCK; keepalive 64; }
    server {
        listen 127.0.0.1:$port;
        location /v1/ {
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer bench-key";
            proxy_buffering off;
        }
    }
}
CONF
    "$@" nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" 2>>"$work/nginx/logs/stderr" &
    NGINX_PID=$!
    pids+=($NGINX_PID)
    for _ in $(seq 100); do
        curl -sf -o /dev/null "http://127.0.0.1:$port/v1/models" && return
        sleep 0.1
    done
    echo "nginx did not start"; cat "$work/nginx/logs/"*; exit 1
}

stop_pid() { kill "$1" 2>/dev/null; wait "$1" 2>/dev/null; }

rps() { # PORT STREAM → requests/s
    BENCH_STREAM=$2 timeout $((SECS + 20)) wrk -t1 -c"$CONNS" -d"${SECS}s" -s bench/post.lua \
        "http://127.0.0.1:$1/v1/chat/completions" 2>&1 | awk '/Requests\/sec/ {print $2}'
}

ratio() { python3 -c "import sys; a,b=float(sys.argv[1] or 0),float(sys.argv[2] or 0); print('%.2f' % (a/b if b else 0))" "$1" "$2"; }

command -v wrk >/dev/null && command -v nginx >/dev/null || {
    echo "bench needs wrk and nginx: apt-get install wrk nginx-light"; exit 1; }
make -s ssegate tools/mock-upstream >/dev/null

start_mock
GW=$(free_port); start_gateway "$GW"
NG=$(free_port); start_nginx "$NG"

echo "wrk -t1 -c$CONNS -d${SECS}s, POST /v1/chat/completions, mock with $CHUNKS content chunks"
echo "mode        direct-mock   ssegate     nginx   ssegate/nginx  ssegate/direct"
for mode in 0 1; do
    d=$(rps "$MOCK" $mode); s=$(rps "$GW" $mode); n=$(rps "$NG" $mode)
    printf "%-10s %12s %9s %9s %14s %15s\n" "$([ $mode = 1 ] && echo streaming || echo plain)" \
        "$d" "$s" "$n" "$(ratio "$s" "$n")" "$(ratio "$s" "$d")"
done
stop_pid "$GW_PID"; stop_pid "$NGINX_PID"

if command -v valgrind >/dev/null; then
    # Instructions per request: the difference between two runs of different
    # lengths, so start-up and shutdown cancel out.
    instr() { # NAME COUNT STREAM → total instructions
        local name=$1 count=$2 stream=$3 port
        port=$(free_port)
        if [ "$name" = ssegate ]; then
            start_gateway "$port" valgrind --tool=callgrind --callgrind-out-file="$work/cg.%p"
            pid=$GW_PID
        else
            start_nginx "$port" valgrind --tool=callgrind --callgrind-out-file="$work/cg.%p"
            pid=$NGINX_PID
        fi
        python3 bench/sequential.py "$port" "$count" "$stream" ${SEQ_KEY:+"$SEQ_KEY"}
        stop_pid "$pid"
        local total
        total=$(grep -h '^summary:' "$work"/cg.* | awk '{print $2}')
        rm -f "$work"/cg.*
        echo "$total"
    }
    echo
    echo "callgrind instructions per request (sequential, one keep-alive connection; (I(600)-I(100))/500)"
    echo "mode        ssegate       nginx   ssegate/nginx"
    for stream in plain stream; do
        s=$(( ($(instr ssegate 600 $stream) - $(instr ssegate 100 $stream)) / 500 ))
        n=$(( ($(instr nginx 600 $stream) - $(instr nginx 100 $stream)) / 500 ))
        printf "%-10s %8s %11s %15s\n" "$stream" "$s" "$n" "$(ratio "$s" "$n")"
    done
    # The cost of client auth and limits: the same requests with a keys file
    # of 10,000 clients, the one used having rpm, tpm and streams limits.
    for i in $(seq 1 9999); do printf 'sk-bench-%05d client-%d\n' "$i" "$i"; done >"$work/keys"
    echo "sk-bench-limited metered 100000000 1000000000 100" >>"$work/keys"
    GW_EXTRA=(--keys-file "$work/keys")
    SEQ_KEY=sk-bench-limited
    echo
    echo "client auth + limits (--keys-file, 10,000 keys), callgrind instructions per request"
    echo "mode        with-keys   without   added"
    for stream in plain stream; do
        k=$(( ($(instr ssegate 600 $stream) - $(instr ssegate 100 $stream)) / 500 ))
        GW_EXTRA=(); SEQ_KEY=
        s=$(( ($(instr ssegate 600 $stream) - $(instr ssegate 100 $stream)) / 500 ))
        GW_EXTRA=(--keys-file "$work/keys"); SEQ_KEY=sk-bench-limited
        printf "%-10s %9s %9s %7s\n" "$stream" "$k" "$s" "$((k - s))"
    done
fi
