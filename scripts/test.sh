#!/usr/bin/env bash
# Set up everything and run the whole test suite: pytest and mypy --strict, on the oldest and the
# newest supported Datasette. Usage: scripts/test.sh [oldest|newest|all] [extra pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
which=${1:-all}
shift || true

# Chromium renders the /-/llm page once in the suite (Debian's package; root installs it).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing chromium (apt-get)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "!! could not install chromium"
  fi
fi

# tests/coordination/ run a real redis-server of their own on a free port of 127.0.0.1 (Debian's
# package; root installs it); without one those tests are skipped, saying so.
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing redis-server (apt-get)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null) \
      || echo "!! could not install redis-server: the Redis tests will be skipped"
  else
    echo "!! redis-server is not installed: the Redis tests will be skipped (apt-get install redis-server)"
  fi
fi

# pip, minus the machine's notices about local index mirrors that do not exist.
pip_install() {
  "$@" 2>&1 | { grep -v "^WARNING: Location 'file://" || true; }
  return "${PIPESTATUS[0]}"
}

run_suite() {
  local label=$1 spec=$2
  shift 2
  local venv=".venv/$label"
  echo "== [$label] setting up $venv with $spec"
  [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
  pip_install "$venv/bin/python" -m pip install -q --disable-pip-version-check -U pip
  pip_install "$venv/bin/python" -m pip install -q --disable-pip-version-check -U -e ".[test]" "$spec"
  "$venv/bin/python" -c "import datasette, llm; print('datasette', datasette.__version__)"
  echo "== [$label] pytest"
  "$venv/bin/python" -m pytest -p no:cacheprovider "$@"
  echo "== [$label] mypy --strict"
  "$venv/bin/python" -m mypy
}

case "$which" in
  oldest) run_suite oldest "datasette==1.0a23" "$@" ;;
  newest) run_suite newest "datasette>=1.0a23,<2" "$@" ;;
  all)
    run_suite oldest "datasette==1.0a23" "$@"
    run_suite newest "datasette>=1.0a23,<2" "$@"
    ;;
  *) echo "usage: scripts/test.sh [oldest|newest|all] [pytest args...]" >&2; exit 2 ;;
esac
