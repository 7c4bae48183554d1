#!/usr/bin/env bash
# The resolver's cost in instructions (callgrind; stable where timings are
# not): per resolution, a cache miss that asks A and AAAA over UDP of the
# test DNS server (tests/integration/dnsserver.py on 127.0.0.1), and per
# cached lookup (dns_peek), what every upstream connect pays in the steady
# state. Every process it starts is stopped by PID.
# Usage: bench/dns.sh [NAMES, default 800: with the 100 of the base run, under
# the cache's 1,024 entries, past which each new name pays an eviction scan]
set -u
cd "$(dirname "$0")/.."
N=${1:-800}
BASE=100
work=$(mktemp -d)
dns_pid=
cleanup() {
    exec 3>&- 2>/dev/null
    [ -n "$dns_pid" ] && kill "$dns_pid" 2>/dev/null
    wait 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
command -v valgrind >/dev/null || { echo "bench/dns.sh: valgrind is not installed"; exit 1; }
[ -x build/dns-bench ] || { echo "bench/dns.sh: run make build/dns-bench first"; exit 1; }

echo '{"wildcards": {"bench.test": {"a": ["127.0.0.1"], "aaaa": ["::1"], "ttl": 300}}}' >"$work/table.json"
mkfifo "$work/stdin"
python3 tests/integration/dnsserver.py --control "$work/table.json" <"$work/stdin" >"$work/dns.out" 2>&1 &
dns_pid=$!
exec 3>"$work/stdin" # the server runs until this closes
for _ in $(seq 100); do grep -q LISTEN "$work/dns.out" && break; sleep 0.1; done
port=$(sed -n 's/^LISTEN 127.0.0.1:\([0-9]*\).*/\1/p' "$work/dns.out")
[ -n "$port" ] || { echo "bench/dns.sh: the DNS server did not start"; exit 1; }
printf 'nameserver 127.0.0.1:%s\noptions timeout:2 attempts:2\n' "$port" >"$work/resolv.conf"
: >"$work/hosts"

run() { # out-file names hits [extra valgrind flags]
    local out=$1 names=$2 hits=$3
    shift 3
    valgrind --tool=callgrind --callgrind-out-file="$out" "$@" \
        build/dns-bench "$work/resolv.conf" "$work/hosts" "$names" "$hits" >"$out.txt" 2>"$out.err" ||
        { echo "bench/dns.sh: dns-bench failed: $(cat "$out.txt") $(tail -3 "$out.err")"; exit 1; }
    sed -n 's/^summary: //p' "$out"
}
small=$(run "$work/cg.small" "$BASE" 0)
large=$(run "$work/cg.large" "$((BASE + N))" 0)
peeks=$(run "$work/cg.peek" "$BASE" 1000 --toggle-collect=dns_peek)
echo "resolutions: $(cat "$work/cg.large.txt")"
echo "# dns: $(( (large - small) / N )) instructions per resolution (A + AAAA over UDP, cache miss; ($large - $small) / $N)"
echo "# dns: $(( peeks / (BASE * 1000) )) instructions per cached lookup (dns_peek, $((BASE * 1000)) calls)"
