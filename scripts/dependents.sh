#!/usr/bin/env bash
# Run the released dependents' own test suites (from their PyPI sdists) against this checkout, or
# against the original with `scripts/dependents.sh anchor`, to compare. Not part of CI: it pins
# older Datasette alphas and takes a few minutes. Venvs and sources go under .venv/dependents/.
#
# Known failures that the original 0.1a8 has too: datasette-llm-accountant's 4 pricing tests and
# datasette-extract's test_extract_flow need the network; datasette-llm-limits' sdist lacks its
# tests/conftest.py (3 modules cannot be collected).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
impl=${1:-ours}
root=$PWD/.venv/dependents
mkdir -p "$root/src"
if [ "$impl" = anchor ]; then target="datasette-llm==0.1a8"; else target=$PWD; fi

# name==version | Datasette alpha its suite passes on | test requirements | pytest args | env
suites=(
  "datasette-enrichments-llm==0.2a1|1.0a26|pytest pytest-asyncio pytest-recording llm-echo httpx python-multipart==0.0.20||"
  "datasette-llm-accountant==0.1a4|1.0a41|pytest pytest-asyncio sqlite-utils llm-echo datasette-debug-gotham||"
  "datasette-extract==0.3a0|1.0a26|pytest pytest-asyncio pytest-recording llm-echo python-multipart==0.0.20||OPENAI_API_KEY=sk-dummy DATASETTE_SECRETS_OPENAI_API_KEY=sk-dummy"
  "datasette-agent==0.4a0|1.0a37|pytest pytest-asyncio llm-echo inline-snapshot||"
  "datasette-llm-limits==0.1a2|1.0a41|pytest pytest-asyncio datasette-llm-accountant==0.1a4|--continue-on-collection-errors|"
)

quiet() { "$@" 2>&1 | grep -v "^WARNING: Location 'file://"; return "${PIPESTATUS[0]}"; }

for entry in "${suites[@]}"; do
  IFS='|' read -r spec datasette requirements args env <<<"$entry"
  name=${spec%%==*}
  source=$root/src/${name}-${spec##*==}
  if [ ! -d "$source" ]; then
    download=$root/sdists/$name
    quiet "$PYTHON" -m pip download -q --no-deps --no-binary "$name" "$spec" -d "$download" >/dev/null
    mkdir -p "$source" && tar -xzf "$download"/*.tar.gz -C "$source" --strip-components=1
  fi
  venv=$root/$impl-$name
  [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
  echo "== $name on datasette $datasette ($impl)"
  # shellcheck disable=SC2086  # requirements is a word list
  if ! quiet "$venv/bin/python" -m pip install -q -e "$source" $requirements "datasette==$datasette" "$target" >/dev/null \
    || ! quiet "$venv/bin/python" -m pip install -q --force-reinstall --no-deps "$target" >/dev/null; then
    echo "$name: install failed"; continue
  fi
  # shellcheck disable=SC2086
  (cd "$source" && env $env "$venv/bin/python" -m pytest -q -p no:cacheprovider $args 2>&1 | tail -1)
done
