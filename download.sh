#!/usr/bin/env bash
# Download the four contest models into llm/ (resumable): bash download.sh [MODEL ...]
set -euo pipefail
cd "$(dirname "$0")"
bash init.sh >/dev/null
exec .venv/bin/python eval/download.py "$@"
