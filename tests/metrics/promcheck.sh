#!/bin/sh
# Renders a populated metrics page (the unit test metrics_sample_page writes
# it to $METRICS_SAMPLE) and has promtool check it: format and lint.
# Usage: tests/metrics/promcheck.sh [unit-test-binary]   (default build/unit-tests)
set -eu
bin=${1:-build/unit-tests}
promtool=${PROMTOOL:-promtool}
command -v "$promtool" >/dev/null || { echo "promcheck: $promtool not found" >&2; exit 2; }
[ -x "$bin" ] || { echo "promcheck: $bin not built (make build/unit-tests)" >&2; exit 2; }
sample=$(mktemp "${TMPDIR:-/tmp}/ssegate-metrics.XXXXXX")
trap 'rm -f "$sample"' EXIT
METRICS_SAMPLE=$sample "$bin" metrics_sample_page >/dev/null
[ -s "$sample" ] || { echo "promcheck: no sample written" >&2; exit 1; }
# promtool prints nothing and exits 0 when the page is clean.
if out=$("$promtool" check metrics <"$sample" 2>&1); then
    echo "promcheck: ok ($(wc -l <"$sample") lines)"
else
    status=$?
    printf '%s\n' "$out"
    echo "promcheck: promtool exited $status" >&2
    exit 1
fi
