#!/usr/bin/env bash
# Benchmarks ssegate against nginx and against bench/minrelay.c (a relay that
# copies bytes and parses nothing: the floor), all relaying the same mock
# upstream on one machine, and prints one table. Timed figures (wrk, CPU,
# page faults, latency) are medians of RUNS interleaved runs; callgrind
# instruction counts and RSS are single runs (they barely move).
# Every process it starts listens on 127.0.0.1 and is stopped by PID; every
# load is bounded in time. Progress goes to stderr, the table to stdout.
# Usage: bench/run.sh [SECONDS per wrk run, default $BENCH_SECONDS or 5]
# Knobs: BENCH_CONNS (wrk -c, 64), BENCH_CHUNKS (events per stream, 16),
# BENCH_RUNS (3), BENCH_LAT_REQS (2000), BENCH_STREAMS ("1000 4000"),
# BENCH_IDLE (1000), BENCH_CPU (latency CPU, default the last), BENCH_TLS=0 skips
# the TLS row, BENCH_AUTH=1 adds the --keys-file cost table.
set -u
cd "$(dirname "$0")/.."
SECS=${1:-${BENCH_SECONDS:-5}}
CONNS=${BENCH_CONNS:-64}
CHUNKS=${BENCH_CHUNKS:-16}
RUNS=${BENCH_RUNS:-3}
LAT_REQS=${BENCH_LAT_REQS:-2000}
STREAM_COUNTS=${BENCH_STREAMS:-1000 4000}
IDLE=${BENCH_IDLE:-1000}
SYSTEMS="ssegate nginx minrelay"
work=$(mktemp -d)
pids=()
GW_EXTRA=()
SEQ_KEY=
declare -A R # results: R[metric,system]
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

# 4,000 held streams through a proxy take 8,000 descriptors in it.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

say() { echo "# $*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Sets MOCK to the port. Not called in $(...): its PID must reach `pids`.
start_mock() {
    tools/mock-upstream --listen 127.0.0.1:0 --chunks "$CHUNKS" >"$work/mock.out" 2>"$work/mock.err" &
    MOCK_PID=$!
    pids+=($MOCK_PID)
    for _ in $(seq 50); do grep -q LISTEN "$work/mock.out" && break; sleep 0.1; done
    MOCK=$(sed -n 's/^LISTEN 127.0.0.1:\([0-9]*\).*/\1/p' "$work/mock.out")
    [ -n "$MOCK" ] || { echo "mock did not start"; exit 1; }
}
# ssegate on PORT relaying to the mock, optionally under a wrapper (valgrind).
start_gateway() {
    local port=$1; shift
    OPENAI_API_KEY=bench-key "$@" ./ssegate --listen "127.0.0.1:$port" --upstream "${GW_UPSTREAM:-http://127.0.0.1:$MOCK/v1}" \
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
worker_rlimit_nofile 20000;
events { worker_connections 10000; }
http {
    access_log off;
    client_body_temp_path $work/nginx/tmp;
    proxy_temp_path $work/nginx/tmp;
    upstream mock { server 127.0.0.1:${NG_UPSTREAM_PORT:-$MOCK}; keepalive 64; keepalive_requests 1000000; }
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$port;
        location /v1/ {
            proxy_pass ${NG_SCHEME:-http}://mock;
${NG_TLS:-}            proxy_http_version 1.1;
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


# The floor: bytes copied both ways, nothing parsed.
start_minrelay() {
    local port=$1; shift
    "$@" build/minrelay "$port" "$MOCK" >/dev/null 2>"$work/minrelay.err" &
    MINRELAY_PID=$!
    pids+=($MINRELAY_PID)
    for _ in $(seq 100); do
        curl -sf -o /dev/null "http://127.0.0.1:$port/v1/models" && return
        sleep 0.1
    done
    echo "minrelay did not start"; cat "$work/minrelay.err"; exit 1
}

# A throw-away CA and a leaf for localhost, for a TLS mock upstream.
make_certs() {
    local d=$work/tls
    mkdir -p "$d"
    (
        cd "$d" || exit 1
        openssl ecparam -name prime256v1 -genkey -noout -out ca.key &&
        openssl req -x509 -new -key ca.key -sha256 -days 2 -subj "/CN=ssegate bench CA" \
            -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign -out ca.pem &&
        openssl ecparam -name prime256v1 -genkey -noout -out leaf-key.pem &&
        openssl req -new -key leaf-key.pem -subj /CN=localhost -out leaf.csr &&
        printf '%s\n' basicConstraints=critical,CA:FALSE keyUsage=critical,digitalSignature \
            extendedKeyUsage=serverAuth subjectAltName=DNS:localhost >leaf.ext &&
        openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -sha256 \
            -extfile leaf.ext -out leaf.pem &&
        cat leaf.pem ca.pem >chain.pem
    ) >"$work/tls.log" 2>&1
}

# Sets MOCK_TLS to the port of a second mock that speaks TLS.
start_mock_tls() {
    tools/mock-upstream --listen 127.0.0.1:0 --chunks "$CHUNKS" --tls-cert "$work/tls/chain.pem" \
        --tls-key "$work/tls/leaf-key.pem" >"$work/mock-tls.out" 2>"$work/mock-tls.err" &
    pids+=($!)
    for _ in $(seq 50); do grep -q LISTEN "$work/mock-tls.out" && break; sleep 0.1; done
    MOCK_TLS=$(sed -n 's/^LISTEN 127.0.0.1:\([0-9]*\).*/\1/p' "$work/mock-tls.out")
    [ -n "$MOCK_TLS" ]
}

# start SYSTEM PORT [WRAPPER...]: sets PID_OF[SYSTEM] and PORT_OF[SYSTEM].
declare -A PID_OF PORT_OF
start() {
    local name=$1 port=$2; shift 2
    case $name in
    ssegate) start_gateway "$port" "$@"; PID_OF[$name]=$GW_PID ;;
    nginx) start_nginx "$port" "$@"; PID_OF[$name]=$NGINX_PID ;;
    minrelay) start_minrelay "$port" "$@"; PID_OF[$name]=$MINRELAY_PID ;;
    esac
    PORT_OF[$name]=$port
}

stop_pid() { kill "$1" 2>/dev/null; wait "$1" 2>/dev/null; }

# minflt utime stime (ticks) of PID, from /proc/PID/stat (fields 10, 14, 15).
proc_counts() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $8, $12, $13}'; }

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {if (NR) print (NR % 2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
calc() { awk "BEGIN {printf \"$1\", $2}"; }

TICK_US=$((1000000 / $(getconf CLK_TCK)))

# wrk_run SYSTEM MODE: one wrk run; appends rps, CPU µs and faults per request.
wrk_run() {
    local name=$1 mode=$2 port pid before after out reqs rps
    port=${PORT_OF[$name]}; pid=${PID_OF[$name]}
    before=$(proc_counts "$pid")
    out=$(BENCH_STREAM=$([ "$mode" = stream ] && echo 1 || echo 0) timeout $((SECS + 20)) \
        wrk -t1 -c"$CONNS" -d"${SECS}s" -s bench/post.lua "http://127.0.0.1:$port/v1/chat/completions" 2>&1)
    after=$(proc_counts "$pid")
    grep -q 'Non-2xx\|Socket errors' <<<"$out" && say "$name $mode: $(grep 'Non-2xx\|Socket errors' <<<"$out")"
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    [ -n "$reqs" ] && [ "$reqs" -gt 0 ] || { say "$name $mode: wrk failed: $out"; return; }
    S[rps_$mode,$name]+=" $rps"
    read -r f0 u0 s0 <<<"$before"; read -r f1 u1 s1 <<<"$after"
    S[usr_$mode,$name]+=" $(calc %.2f "($u1 - $u0) * $TICK_US / $reqs")"
    S[sys_$mode,$name]+=" $(calc %.2f "($s1 - $s0) * $TICK_US / $reqs")"
    S[flt_$mode,$name]+=" $(calc %.3f "($f1 - $f0) / $reqs")"
}

command -v wrk >/dev/null && command -v nginx >/dev/null || {
    echo "bench needs wrk and nginx: apt-get install wrk nginx-light"; exit 1; }
make -s ssegate tools/mock-upstream >/dev/null
mkdir -p build
cc -O2 -o build/minrelay bench/minrelay.c || exit 1

declare -A S # samples: space-separated, one per run
start_mock
for name in $SYSTEMS; do start "$name" "$(free_port)"; done
PID_OF[mock]=$MOCK_PID
PORT_OF[mock]=$MOCK

# Throughput, CPU and page faults under wrk; the runs interleave systems so
# a slow moment of the machine spreads over all of them.
for run in $(seq "$RUNS"); do
    for mode in plain stream; do
        for name in mock $SYSTEMS; do
            say "wrk run $run/$RUNS $mode $name"
            wrk_run "$name" "$mode"
        done
    done
done

# Latency at concurrency 1, everything on one CPU, so the figure is the work
# on the request path and not scheduling across cores.
# The last CPU by default: CPU 0 takes more of the machine's interrupts.
LAT_CPU=${BENCH_CPU:-$(($(nproc) - 1))}
for name in mock $SYSTEMS; do taskset -pc "$LAT_CPU" "${PID_OF[$name]}" >/dev/null; done
for run in $(seq "$RUNS"); do
    for mode in plain stream; do
        for name in mock $SYSTEMS; do
            say "latency run $run/$RUNS $mode $name"
            read -r p50 p99 < <(timeout 120 taskset -c "$LAT_CPU" python3 bench/load.py latency "${PORT_OF[$name]}" "$LAT_REQS" "$mode")
            S[p50_$mode,$name]+=" $p50"; S[p99_$mode,$name]+=" $p99"
        done
    done
done
for key in "${!S[@]}"; do R[$key]=$(median ${S[$key]}); done
for name in $SYSTEMS; do
    for mode in plain stream; do
        R[lat_$mode,$name]="$(calc %.0f "${R[p50_$mode,$name]} - ${R[p50_$mode,mock]}")/$(calc %.0f "${R[p99_$mode,$name]} - ${R[p99_$mode,mock]}")"
    done
    stop_pid "${PID_OF[$name]}"
done
taskset -pc "0-$(($(nproc) - 1))" "${PID_OF[mock]}" >/dev/null

# Memory: a fresh process per figure, so one probe's freed memory does not
# hide the next one's growth. Streams are paced by the mock (X-Mock-Delay-Ms)
# and held open until every one has had its first event.
for name in $SYSTEMS; do
    for n in $STREAM_COUNTS; do
        say "RSS with $n paced streams: $name"
        start "$name" "$(free_port)"
        R[rss_$n,$name]=$(timeout 150 python3 bench/load.py streams "${PORT_OF[$name]}" "$n" "${PID_OF[$name]}")
        stop_pid "${PID_OF[$name]}"
    done
    say "RSS with $IDLE idle keep-alive connections: $name"
    start "$name" "$(free_port)"
    R[idle,$name]=$(timeout 150 python3 bench/load.py idle "${PORT_OF[$name]}" "$IDLE" "${PID_OF[$name]}")
    stop_pid "${PID_OF[$name]}"
done

# The same paced streams over a TLS upstream (ssegate and nginx; minrelay
# copies bytes and has no TLS to terminate).
TLS_N=${STREAM_COUNTS%% *}
if [ "${BENCH_TLS:-1}" = 1 ] && make_certs && start_mock_tls; then
    GW_UPSTREAM=https://localhost:$MOCK_TLS/v1
    GW_EXTRA=(--ca-file "$work/tls/ca.pem")
    NG_SCHEME=https NG_UPSTREAM_PORT=$MOCK_TLS
    NG_TLS="            proxy_ssl_trusted_certificate $work/tls/ca.pem;
            proxy_ssl_verify on;
            proxy_ssl_name localhost;
            proxy_ssl_server_name on;
            proxy_ssl_session_reuse on;"
    for name in ssegate nginx; do
        say "RSS with $TLS_N paced streams, TLS upstream: $name"
        start "$name" "$(free_port)"
        R[tls_$TLS_N,$name]=$(timeout 150 python3 bench/load.py streams "${PORT_OF[$name]}" "$TLS_N" "${PID_OF[$name]}")
        stop_pid "${PID_OF[$name]}"
    done
    GW_UPSTREAM= GW_EXTRA=() NG_SCHEME= NG_UPSTREAM_PORT= NG_TLS=
else
    [ "${BENCH_TLS:-1}" = 1 ] && say "TLS mock did not start: $(cat "$work/tls.log" "$work/mock-tls.err" 2>/dev/null | tail -3)"
fi

R[size,ssegate]=$(stat -c %s ssegate)
R[size,nginx]=$(stat -c %s "$(command -v nginx)")
R[size,minrelay]=$(stat -c %s build/minrelay)

# Instructions (callgrind): the difference between runs of 600 and 100
# sequential requests on one keep-alive connection, so start-up and shutdown
# cancel out; per chunk, what a streamed request costs over a plain one,
# divided by the events in a stream.
instr() { # SYSTEM COUNT MODE → total instructions
    local name=$1 count=$2 mode=$3 total
    start "$name" "$(free_port)" valgrind --tool=callgrind --callgrind-out-file="$work/cg.%p"
    python3 bench/sequential.py "${PORT_OF[$name]}" "$count" "$mode" ${SEQ_KEY:+"$SEQ_KEY"}
    stop_pid "${PID_OF[$name]}"
    total=$(grep -h '^summary:' "$work"/cg.* | awk '{print $2}')
    rm -f "$work"/cg.*
    echo "$total"
}
per_request() { echo $(( ($(instr "$1" 600 "$2") - $(instr "$1" 100 "$2")) / 500 )); }
if command -v valgrind >/dev/null; then
    for name in $SYSTEMS; do
        say "callgrind: $name"
        R[ins_plain,$name]=$(per_request "$name" plain)
        ins_stream=$(per_request "$name" stream)
        R[ins_chunk,$name]=$(( (ins_stream - R[ins_plain,$name]) / CHUNKS ))
    done
else
    say "no valgrind: instruction rows left empty (apt-get install valgrind)"
fi

kib() { [ -n "$1" ] && calc %.1f "$1 / 1024"; }
row() { # LABEL MOCK-CELL then one cell per system
    printf '%-44s %12s' "$1" "$2"; shift 2
    for v in "$@"; do printf ' %12s' "${v:--}"; done
    echo
}
cells() { local m=$1 name; for name in $SYSTEMS; do printf '%s\n' "${R[$m,$name]:-}"; done; }
pair() { local a=$1 b=$2 name; for name in $SYSTEMS; do printf '%s/%s\n' "${R[$a,$name]:-?}" "${R[$b,$name]:-?}"; done; }
mapfile_row() { local label=$1 mockcell=$2; shift 2; local -a v; mapfile -t v < <("$@"); row "$label" "$mockcell" "${v[@]}"; }
kib_cells() { local m=$1 name; for name in $SYSTEMS; do kib "${R[$m,$name]:-}"; echo; done; }

echo
echo "ssegate vs nginx ($(nginx -v 2>&1 | sed 's/.*nginx\///')) vs minrelay (bench/minrelay.c: copies bytes, parses nothing)"
echo "upstream: tools/mock-upstream on 127.0.0.1, $CHUNKS content events per stream; timed rows: median of $RUNS interleaved runs"
row "" "mock" $SYSTEMS
mapfile_row "req/s plain (wrk -t1 -c$CONNS -d${SECS}s)" "${R[rps_plain,mock]:-}" cells rps_plain
mapfile_row "req/s stream" "${R[rps_stream,mock]:-}" cells rps_stream
mapfile_row "CPU us/req plain, user/sys" "" pair usr_plain sys_plain
mapfile_row "CPU us/req stream, user/sys" "" pair usr_stream sys_stream
mapfile_row "minor page faults/req plain" "" cells flt_plain
mapfile_row "minor page faults/req stream" "" cells flt_stream
mapfile_row "instructions/req plain (callgrind)" "" cells ins_plain
mapfile_row "instructions/chunk stream (callgrind)" "" cells ins_chunk
for n in $STREAM_COUNTS; do
    mapfile_row "RSS KiB/stream, $n paced streams" "" kib_cells "rss_$n"
done
[ -n "${TLS_N:-}" ] && mapfile_row "RSS KiB/stream, $TLS_N paced, TLS upstream" "" kib_cells "tls_$TLS_N"
mapfile_row "RSS KiB/idle keep-alive conn ($IDLE)" "" kib_cells idle
mapfile_row "latency us p50/p99 plain (c=1; mock: raw)" "${R[p50_plain,mock]%.*}/${R[p99_plain,mock]%.*}" cells lat_plain
mapfile_row "1st event us p50/p99 stream (others: added)" "${R[p50_stream,mock]%.*}/${R[p99_stream,mock]%.*}" cells lat_stream
mapfile_row "binary KiB (ssegate static; others dynamic)" "" kib_cells size

# The cost of client auth and limits: the same requests with a keys file of
# 10,000 clients, the one used having rpm, tpm and streams limits.
if [ "${BENCH_AUTH:-0}" = 1 ] && command -v valgrind >/dev/null; then
    for i in $(seq 1 9999); do printf 'sk-bench-%05d client-%d\n' "$i" "$i"; done >"$work/keys"
    echo "sk-bench-limited metered 100000000 1000000000 100" >>"$work/keys"
    echo
    echo "client auth + limits (--keys-file, 10,000 keys), callgrind instructions per request"
    echo "mode        with-keys   without   added"
    for mode in plain stream; do
        GW_EXTRA=(--keys-file "$work/keys"); SEQ_KEY=sk-bench-limited
        k=$(per_request ssegate "$mode")
        GW_EXTRA=(); SEQ_KEY=
        printf "%-10s %9s %9s %7s\n" "$mode" "$k" "${R[ins_$mode,ssegate]}" "$((k - R[ins_$mode,ssegate]))"
    done
fi
