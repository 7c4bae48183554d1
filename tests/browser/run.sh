#!/usr/bin/env bash
# The built-in chat page in headless Chromium (playwright-core, no browser
# download: Debian's chromium at /usr/bin/chromium, or $CHROMIUM).
# Usage: tests/browser/run.sh [GATEWAY] [MOCK]   (from the repo root; defaults ./ssegate tools/mock-upstream)
# page.test.mjs starts its mock + gateway pairs with `run.py --serve` and
# stops them by closing their stdin. Last line: `N passed, N failed`.
set -u
cd "$(dirname "$0")/../.."
GATEWAY=${1:-./ssegate}
MOCK=${2:-tools/mock-upstream}
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}

if [ ! -x "$CHROMIUM" ]; then
  echo "FAIL browser: no Chromium at $CHROMIUM (Debian package chromium)"; echo "0 passed, 1 failed"; exit 1
fi
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  (cd tests/browser && timeout 300 npm ci --no-audit --no-fund --loglevel=error) || {
    echo "FAIL browser: npm ci failed"; echo "0 passed, 1 failed"; exit 1; }
fi

CHROMIUM="$CHROMIUM" timeout 240 node tests/browser/page.test.mjs "$GATEWAY" "$MOCK"
rc=$?
if [ $rc -eq 124 ]; then echo "FAIL browser: node timed out"; echo "0 passed, 1 failed"; fi
exit $rc
