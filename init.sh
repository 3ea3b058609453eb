#!/usr/bin/env bash
# Set up the project's virtual environment in .venv/ (idempotent).
#
#   bash init.sh              the CPU profile, or the Ascend profile where an NPU is present
#   bash init.sh --cpu        force the CPU profile (mindspore-dev 2.6, fp32 tests)
#   bash init.sh --ascend     force the Ascend profile (MindSpore 2.6.0, as the contest has it)
#   bash init.sh --relock     re-resolve requirements-<profile>.txt and rewrite its lock file
#
# Installs from requirements-<profile>.lock when it exists (exact versions), otherwise resolves
# requirements-<profile>.txt and writes the lock. mindnlp 0.4.1 goes in with --no-deps.
set -euo pipefail
cd "$(dirname "$0")"

profile=auto
relock=0
for arg in "$@"; do
  case "$arg" in
    --cpu) profile=cpu ;;
    --ascend) profile=ascend ;;
    --relock) relock=1 ;;
    *) echo "init.sh: unknown option $arg (use --cpu, --ascend, --relock)" >&2; exit 2 ;;
  esac
done
if [ "$profile" = auto ]; then
  if command -v npu-smi >/dev/null 2>&1 || [ -e /dev/davinci0 ]; then profile=ascend; else profile=cpu; fi
fi

supported() { "$1" -c 'import sys; sys.exit(0 if (3, 9) <= sys.version_info[:2] <= (3, 11) else 1)' 2>/dev/null; }
python=""
for candidate in python3.11 python3.10 python3.9 python3; do
  if command -v "$candidate" >/dev/null 2>&1 && supported "$candidate"; then python=$candidate; break; fi
done
if [ -z "$python" ]; then
  found=$(python3 --version 2>&1 || echo "no python3")
  echo "init.sh: MindSpore 2.6 needs Python 3.9, 3.10 or 3.11; this machine has: $found." >&2
  echo "Install one (for example: apt-get install python3.11 python3.11-venv) and run init.sh again." >&2
  exit 1
fi

lock="requirements-$profile.lock"
stamp=".venv/.init-stamp"
digest() { cat "requirements-$profile.txt" requirements-common.txt requirements-mindnlp.txt "$lock" 2>/dev/null | sha256sum | cut -c1-16 || true; }
want="$profile $(digest)"
if [ -x .venv/bin/python ] && [ "$relock" = 0 ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  echo "init.sh: .venv is up to date ($profile profile)"
else
  [ -x .venv/bin/python ] || "$python" -m venv .venv
  pip() { .venv/bin/python -m pip --disable-pip-version-check "$@"; }
  fail() {
    echo "init.sh: pip could not install the $profile profile (see above). Are PyPI and the" >&2
    echo "package index reachable from this machine? Nothing else was changed; run init.sh again." >&2
    exit 1
  }
  if [ -f "$lock" ] && [ "$relock" = 0 ]; then
    pip install --quiet --no-deps -r "$lock" || fail
  else
    pip install --quiet -r "requirements-$profile.txt" || fail
    pip install --quiet --no-deps -r requirements-mindnlp.txt || fail
    pip freeze --exclude-editable | LC_ALL=C sort > "$lock"
    echo "init.sh: wrote $lock"
  fi
  echo "$profile $(digest)" > "$stamp"
fi

.venv/bin/python - "$profile" <<'PY'
import importlib.metadata as md, platform, sys
names = ["mindspore-dev", "mindspore", "mindnlp", "numpy", "tokenizers", "safetensors", "pytest"]
versions = []
for name in names:
    try:
        versions.append(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        pass
print(f"init.sh: {sys.argv[1]} profile, Python {platform.python_version()}: " + ", ".join(versions))
PY
