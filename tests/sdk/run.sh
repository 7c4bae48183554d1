#!/usr/bin/env bash
# The official openai npm package against ssegate + tools/mock-upstream.
# Usage: tests/sdk/run.sh [GATEWAY] [MOCK]   (from the repo root; defaults ./ssegate tools/mock-upstream)
# Last line: `N passed, N failed`.
set -u
cd "$(dirname "$0")/../.."
GATEWAY=${1:-./ssegate}
MOCK=${2:-tools/mock-upstream}

if [ ! -d tests/sdk/node_modules/openai ]; then
  (cd tests/sdk && timeout 300 npm ci --no-audit --no-fund --loglevel=error) || {
    echo "FAIL sdk: npm ci failed"; echo "0 passed, 1 failed"; exit 1; }
fi

# run.py --serve starts a mock and a gateway, prints the gateway's port and keeps
# them until its stdin closes; it kills them by PID when it ends.
coproc SERVE { exec python3 tests/integration/run.py --serve --serve-seconds 300 \
                 --gateway "$GATEWAY" --mock "$MOCK"; }
# bash unsets SERVE and SERVE_PID when the coproc ends: keep copies
SRV_PID=$SERVE_PID
SRV_OUT=${SERVE[0]}
SRV_IN=${SERVE[1]}
PORT=
read -t 30 -r PORT <&"$SRV_OUT" || true
case "$PORT" in
  ''|*[!0-9]*)
    echo "FAIL sdk: could not start mock + gateway (got '${PORT}')"
    kill "$SRV_PID" 2>/dev/null; wait "$SRV_PID" 2>/dev/null
    echo "0 passed, 1 failed"; exit 1;;
esac

timeout 120 node tests/sdk/stream.mjs "$PORT"
rc=$?
if [ $rc -eq 124 ]; then echo "FAIL sdk: node timed out"; echo "0 passed, 1 failed"; fi

# closing its stdin stops run.py --serve; SIGTERM by PID if it lingers
eval "exec ${SRV_IN}>&-"
for _ in $(seq 1 50); do kill -0 "$SRV_PID" 2>/dev/null || break; sleep 0.1; done
kill "$SRV_PID" 2>/dev/null
wait "$SRV_PID" 2>/dev/null
exit $rc
