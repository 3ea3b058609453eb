#!/usr/bin/env bash
# Apply patches/* with git apply to a fresh copy of the base, import the patched package and run
# the smoke tests against it, the way a user has the tree after `git apply patches/*`.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.build/verify
python3 scripts/series.py apply "$dest"
PYTHONPATH="$dest" .venv/bin/python -c \
  "import mindnlp.transformers, mindnlp.accel as a; assert a.__file__.startswith('$PWD/$dest'), a.__file__"
MINDNLP_TREE="$dest" .venv/bin/python -m pytest tests -q -m smoke -p no:cacheprovider
echo "verify.sh: patches/ applies to the base and passes the smoke tests"
