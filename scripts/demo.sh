#!/usr/bin/env bash
# Set up and run the demo: a real Datasette on 127.0.0.1 with datasette-llm, a demo plugin
# registering purposes, and llm-echo's keyless `echo` model as the default.
# Usage: scripts/demo.sh [port]   (open http://127.0.0.1:PORT/-/demo and the printed root login URL)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
port=${1:-8001}
venv=.venv/demo
[ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
quiet() { "$@" 2>&1 | { grep -v "^WARNING: Location 'file://" || true; }; return "${PIPESTATUS[0]}"; }
quiet "$venv/bin/python" -m pip install -q --disable-pip-version-check -U pip
quiet "$venv/bin/python" -m pip install -q --disable-pip-version-check -e . "llm-echo>=0.4"
export LLM_USER_PATH=${LLM_USER_PATH:-$PWD/.venv/demo-llm-user}
echo "== datasette-llm demo on http://127.0.0.1:$port/-/demo"
echo "   routing page: http://127.0.0.1:$port/-/llm (log in with the root URL printed below)"
exec "$venv/bin/datasette" serve --memory --root \
  -c demo/datasette.yaml --plugins-dir demo/plugins -h 127.0.0.1 -p "$port"
