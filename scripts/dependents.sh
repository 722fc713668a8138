#!/usr/bin/env bash
# Run the released dependents' own test suites (from their PyPI sdists) against this checkout, or
# against the original with `scripts/dependents.sh anchor`, to compare. Not part of CI: it pins
# older Datasette alphas and takes a few minutes. Venvs and sources go under .venv/dependents/.
#
# Known failures that the original 0.1a8 has too: datasette-llm-accountant's 4 pricing tests and
# datasette-extract's test_extract_flow need the network; datasette-llm-limits' sdist lacks its
# tests/conftest.py (3 modules cannot be collected).
#
# The first suite is 0.1a8's own tests/, run unchanged from its sdist (without its datasette_llm/
# package, so the installed target is what gets imported). It is the only suite whose failure
# makes this script exit non-zero. `ONLY=datasette-llm scripts/dependents.sh` runs just one suite.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
impl=${1:-ours}
root=$PWD/.venv/dependents
mkdir -p "$root/src"
if [ "$impl" = anchor ]; then target="datasette-llm==0.1a8"; else target=$PWD; fi

# 0.1a8's own tests that read its private names (model._key, LLM._resolve_model_id,
# LLM._get_purpose_key_for_model): not part of the contract dependents use, so deselected.
# (Against ours each fails only with AttributeError on that name; per-purpose keys are still
# checked through the public API by test_purpose_key_overrides_default_key and
# test_purpose_models_list_key_takes_priority_over_purpose_model_key.)
private_tests=(
  test_purpose_model_dict_with_key                  # model._key
  test_purpose_models_list_dict_with_key            # model._key
  test_default_model_dict_with_key                  # model._key
  test_group_uses_purpose_key                       # model._key
  test_same_provider_different_keys_in_models_list  # LLM._get_purpose_key_for_model
  test_model_dict_no_key_field                      # LLM._get_purpose_key_for_model
  test_resolve_model_id_with_dict_default           # LLM._resolve_model_id
  test_resolve_model_id_with_dict_purpose_model     # LLM._resolve_model_id
)
deselect=$(printf -- '--deselect=tests/test_llm.py::%s ' "${private_tests[@]}")

# name==version | Datasette alpha its suite passes on | test requirements | pytest args | env
suites=(
  "datasette-llm==0.1a8|1.0a41|pytest pytest-asyncio llm-echo>=0.5a0|$deselect|"
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
  [ -n "${ONLY:-}" ] && [ "$name" != "$ONLY" ] && continue
  source=$root/src/${name}-${spec##*==}
  if [ ! -d "$source" ]; then
    download=$root/sdists/$name
    quiet "$PYTHON" -m pip download -q --no-deps --no-binary "$name" "$spec" -d "$download" >/dev/null
    # For 0.1a8's own suite leave its package out: running from $source must import the target.
    mkdir -p "$source" && tar -xzf "$download"/*.tar.gz -C "$source" --strip-components=1 \
      --exclude='*/datasette_llm' --exclude='*/datasette_llm.egg-info'
  fi
  editable=(-e "$source")
  [ "$name" = datasette-llm ] && editable=()
  venv=$root/$impl-$name
  [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
  echo "== $name on datasette $datasette ($impl)"
  # shellcheck disable=SC2086  # requirements is a word list
  if ! quiet "$venv/bin/python" -m pip install -q ${editable[@]+"${editable[@]}"} $requirements "datasette==$datasette" "$target" >/dev/null \
    || ! quiet "$venv/bin/python" -m pip install -q --force-reinstall --no-deps "$target" >/dev/null; then
    echo "$name: install failed"; [ "$name" = datasette-llm ] && status=1; continue
  fi
  # shellcheck disable=SC2086  # args and env are word lists
  if [ "$name" = datasette-llm ]; then
    # Show every failure of 0.1a8's own suite, and fail the script on any.
    (cd "$source" && env $env "$venv/bin/python" -m pytest -q -p no:cacheprovider -rfE $args 2>&1 \
      | sed -n '/short test summary/,$p;$p' | uniq) || status=1
  else
    (cd "$source" && env $env "$venv/bin/python" -m pytest -q -p no:cacheprovider $args 2>&1 | tail -1)
  fi
done
exit "${status:-0}"
