#!/usr/bin/env bash
# Export the series: patches/ (committed) and patches.zip (to submit). --check: fail if stale.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 scripts/series.py export "$@"
