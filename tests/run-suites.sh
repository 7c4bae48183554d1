#!/usr/bin/env bash
# Runs each test suite given as "NAME::COMMAND", shows its output, and adds up
# the `N passed, N failed` line each one ends with. A suite that ends without
# that line (a crash, a timeout) counts as one failure. Last line: the totals.
set -u
passed=0
failed=0
broken=()
for spec in "$@"; do
    name=${spec%%::*}
    cmd=${spec#*::}
    echo "=== $name"
    log=$(mktemp)
    bash -c "$cmd" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    line=$(grep -E '^([A-Za-z]+: )?[0-9]+ passed, [0-9]+ failed' "$log" | tail -n 1)
    rm -f "$log"
    if [ -z "$line" ]; then
        echo "=== $name: ended (exit $rc) without a result line"
        failed=$((failed + 1))
        broken+=("$name")
        continue
    fi
    p=$(echo "$line" | sed -E 's/^([A-Za-z]+: )?([0-9]+) passed, ([0-9]+) failed.*/\2/')
    f=$(echo "$line" | sed -E 's/^([A-Za-z]+: )?([0-9]+) passed, ([0-9]+) failed.*/\3/')
    passed=$((passed + p))
    failed=$((failed + f))
    if [ "$f" -gt 0 ] || [ "$rc" -ne 0 ]; then
        broken+=("$name")
        [ "$f" -eq 0 ] && failed=$((failed + 1))
    fi
done
[ ${#broken[@]} -gt 0 ] && echo "failing suites: ${broken[*]}"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
