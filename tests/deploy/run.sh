#!/usr/bin/env bash
# Checks the operations files (Dockerfile, deploy/) without Docker or a
# cluster; see tests/deploy/checks.py for what each check does.
# Usage: tests/deploy/run.sh [SSEGATE_BINARY] [NAME-SUBSTRING]
# Prints ok/FAIL/skip lines, then `N passed, N failed`.
set -u
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
binary=${1:-$repo/ssegate}
only=${2:-}
limit=${DEPLOY_TESTS_TIMEOUT:-300}

log=$(mktemp "${TMPDIR:-/tmp}/ssegate-deploy.XXXXXX")
trap 'rm -f "$log"' EXIT

timeout --kill-after=10 "$limit" "${PYTHON:-python3}" "$here/checks.py" "$repo" "$binary" "$only" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}

passed=$(grep -c '^ok - ' "$log")
failed=$(grep -c '^FAIL - ' "$log")
skipped=$(grep -c '^skip - ' "$log")
if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then
    # Killed by the time limit, or a crash before any check failed.
    echo "FAIL - checks.py exited $rc"
    failed=$((failed + 1))
fi
[ "$skipped" -gt 0 ] && echo "($skipped skipped)"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
