#!/usr/bin/env bash
# Build .fork/: the base plus our series, one commit per patch (see scripts/series.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 scripts/series.py fork
