#!/usr/bin/env bash
# Every Python proof of proactor-py, for CI. Builds the wheel once (abi3:
# one wheel for CPython 3.11+) and runs, on each CPython under pyenv:
#   smoke       asyncio.run-style smoke test
#   race        the seed's race run, plain and TLS, 100 ms and 1 ms: 0 bytes lost
#   frameworks  aiohttp server+client, uvicorn app, web.run_app + SIGINT
#   cpython     CPython's asyncio test groups: asyncio | uvloop | proactor
#   cpython-quick  the same groups, asyncio | proactor only
#   uvloop      uvloop's own suite (fetched from its source package) on proactor
# PROACTOR_PY_STEPS run on PROACTOR_PY_FULL (default: the first version);
# PROACTOR_PY_QUICK_STEPS on the other versions. maturin, uvloop, aiohttp
# and uvicorn come from the package registry at run time; nothing is
# vendored. Every test has a time limit (faulthandler in the runners,
# PROACTOR_TEST_TIMEOUT seconds each, `timeout` around each step).
#
#   PROACTOR_PY_VERSIONS="3.12"  PROACTOR_PY_STEPS="smoke race"  bash ci.sh
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
VERSIONS=${PROACTOR_PY_VERSIONS:-"3.11 3.12 3.13"}
STEPS=${PROACTOR_PY_STEPS:-"smoke race frameworks cpython uvloop"}
QUICK_STEPS=${PROACTOR_PY_QUICK_STEPS:-"smoke race frameworks cpython-quick"}
FULL=${PROACTOR_PY_FULL:-${VERSIONS%% *}}
export PROACTOR_PY_WORK=${PROACTOR_PY_WORK:-/tmp/proactor-py-ci}
WORK=$PROACTOR_PY_WORK
PYROOT=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")/versions
export PIP_DISABLE_PIP_VERSION_CHECK=1

py_for() { ls -d "$PYROOT"/"$1".*/bin/python"$1" 2>/dev/null | sort -V | tail -1; }

mkdir -p "$WORK"
first=$(for v in $VERSIONS; do py_for "$v"; done | head -1)
[ -n "$first" ] || { echo "no CPython for $VERSIONS under $PYROOT"; exit 1; }
echo "== building the wheel with $first"
"$first" -m venv "$WORK/build" && "$WORK/build/bin/pip" install -q maturin || exit 1
rm -rf "$WORK/dist"
(cd "$HERE" && "$WORK/build/bin/maturin" build --release -i "$first" -o "$WORK/dist") || exit 1

passed=0; failed=0; failures=""
step() {  # step NAME VERSION TIMEOUT COMMAND...
    local name=$1 v=$2 limit=$3; shift 3
    echo "== [$v] $name"
    local t0=$SECONDS
    if (cd "$WORK" && timeout --kill-after=10 "$limit" "$@"); then
        passed=$((passed + 1))
        echo "-- [$v] $name passed in $((SECONDS - t0))s"
    else
        echo "-- [$v] $name FAILED after $((SECONDS - t0))s"
        failed=$((failed + 1)); failures="$failures $v:$name"
    fi
}

for v in $VERSIONS; do
    py=$(py_for "$v")
    if [ -z "$py" ]; then echo "== CPython $v not found: skipped"; continue; fi
    venv="$WORK/venv-$v"
    "$py" -m venv "$venv" && "$venv/bin/pip" install -q uvloop aiohttp uvicorn pyOpenSSL \
        && "$venv/bin/pip" install -q --force-reinstall --no-deps "$WORK"/dist/*.whl \
        || { failed=$((failed + 1)); failures="$failures $v:install"; continue; }
    P="$venv/bin/python"
    steps=$QUICK_STEPS
    [ "$v" = "$FULL" ] && steps=$STEPS
    for s in $steps; do
        case $s in
            smoke) step smoke "$v" 120 "$P" "$HERE/tests/smoke.py" ;;
            race) step race "$v" 300 "$P" "$HERE/tests/race.py" ;;
            frameworks) step frameworks "$v" 300 "$P" "$HERE/tests/frameworks.py" ;;
            cpython) step cpython-groups "$v" 900 "$P" "$HERE/tests/cpython_groups.py" ;;
            cpython-quick) step cpython-groups "$v" 300 "$P" "$HERE/tests/cpython_groups.py" --loops asyncio,proactor ;;
            uvloop) step uvloop-suite "$v" 900 "$P" "$HERE/tests/uvloop_suite.py" ;;
        esac
    done
done
echo "proactor-py:$failures"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
