#!/usr/bin/env bash
# Every Python proof of proactor-py, for CI. Builds the wheel once (abi3:
# one wheel for CPython 3.11+) and runs, on each CPython asked for:
#   smoke       asyncio.run-style smoke test, and a few regressions
#   race        the seed's race run, plain and TLS, 100 ms and 1 ms: 0 bytes lost
#   frameworks  aiohttp server+client, uvicorn app, web.run_app + SIGINT
#   cpython     CPython's asyncio test groups: asyncio | uvloop | proactor
#   cpython-quick  the same groups, asyncio | proactor only
#   uvloop      uvloop's own suite (fetched from its source package):
#               asyncio | uvloop | proactor
# PROACTOR_PY_STEPS run on PROACTOR_PY_FULL (default: the first version
# found); PROACTOR_PY_QUICK_STEPS on the other versions. A CPython is taken
# from pyenv (`pyenv root`/versions/X.Y.*) or else from PATH (pythonX.Y);
# a version found in neither is skipped, and said so at the start and at the
# end (no version at all is a failure). maturin, uvloop, aiohttp, uvicorn
# and pyOpenSSL come from the package registry at run time, each venv with
# only what its steps need; nothing is vendored. Every test has a time limit
# (faulthandler in the runners, PROACTOR_TEST_TIMEOUT seconds each) and
# every command a `timeout`.
#
#   PROACTOR_PY_VERSIONS="3.12"  PROACTOR_PY_STEPS="smoke race"  bash ci.sh
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
VERSIONS=${PROACTOR_PY_VERSIONS:-"3.11 3.12 3.13"}
STEPS=${PROACTOR_PY_STEPS:-"smoke race frameworks cpython uvloop"}
QUICK_STEPS=${PROACTOR_PY_QUICK_STEPS:-"smoke race frameworks cpython-quick"}
export PROACTOR_PY_WORK=${PROACTOR_PY_WORK:-/tmp/proactor-py-ci}
WORK=$PROACTOR_PY_WORK
PYROOT=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")/versions
export PIP_DISABLE_PIP_VERSION_CHECK=1
T0=$SECONDS

# The interpreter for version X.Y: pyenv's newest X.Y.*, else pythonX.Y on
# PATH (a Debian python3.X needs python3.X-venv; CPython's test package,
# for the cpython steps, is libpython3.X-testsuite there).
py_for() {
    local p
    p=$(ls -d "$PYROOT"/"$1".*/bin/python"$1" 2>/dev/null | sort -V | tail -1)
    [ -n "$p" ] || p=$(command -v "python$1" 2>/dev/null)
    [ -n "$p" ] && echo "$p"
}

found=""; skipped=""
for v in $VERSIONS; do
    p=$(py_for "$v")
    if [ -n "$p" ]; then
        found="$found $v"; echo "== CPython $v: $p"
    else
        skipped="$skipped $v"
        echo "== SKIPPED: CPython $v (not under $PYROOT, no python$v on PATH)"
    fi
done
found=${found# }
[ -n "$found" ] || { echo "no CPython for any of $VERSIONS (pyenv or PATH)"; exit 1; }
FULL=${PROACTOR_PY_FULL:-${found%% *}}
case " $found " in
    *" $FULL "*) ;;
    *) echo "== CPython $FULL (the full run) not found: the full steps run on ${found%% *}"
       FULL=${found%% *} ;;
esac

mkdir -p "$WORK"
first=$(py_for "${found%% *}")
echo "== building the wheel with $first"
timeout --kill-after=10 600 "$first" -m venv "$WORK/build" &&
    timeout --kill-after=10 600 "$WORK/build/bin/pip" install -q maturin || exit 1
rm -rf "$WORK/dist"
(cd "$HERE" && timeout --kill-after=10 1800 "$WORK/build/bin/maturin" build --release \
    -i "$first" -o "$WORK/dist") || exit 1
echo "-- wheel built at $((SECONDS - T0))s"

passed=0; failed=0; failures=""; timings=""
step() {  # step NAME VERSION TIMEOUT COMMAND...
    local name=$1 v=$2 limit=$3; shift 3
    echo "== [$v] $name"
    local t0=$SECONDS
    if (cd "$WORK" && timeout --kill-after=10 "$limit" "$@"); then
        passed=$((passed + 1))
        echo "-- [$v] $name passed in $((SECONDS - t0))s"
    else
        echo "-- [$v] $name FAILED after $((SECONDS - t0))s (limit ${limit}s)"
        failed=$((failed + 1)); failures="$failures $v:$name"
    fi
    timings="$timings
  $((SECONDS - t0))s  [$v] $name"
}

for v in $found; do
    py=$(py_for "$v")
    venv="$WORK/venv-$v"
    steps=$QUICK_STEPS
    [ "$v" = "$FULL" ] && steps=$STEPS
    # Only what the steps need from the package registry.
    deps=""
    case " $steps " in *" frameworks "*) deps="$deps aiohttp uvicorn" ;; esac
    case " $steps " in *" cpython "*) deps="$deps uvloop" ;; esac
    case " $steps " in *" uvloop "*) deps="$deps uvloop aiohttp pyOpenSSL" ;; esac
    deps=$(printf '%s\n' $deps | sort -u | tr '\n' ' ')
    deps=${deps% }
    t0=$SECONDS
    if ! { timeout --kill-after=10 300 "$py" -m venv "$venv" &&
        { [ -z "$deps" ] || timeout --kill-after=10 600 "$venv/bin/pip" install -q $deps; } &&
        timeout --kill-after=10 300 "$venv/bin/pip" install -q --force-reinstall --no-deps "$WORK"/dist/*.whl; }; then
        echo "-- [$v] install FAILED (venv, pip install ${deps:-(nothing)}, or the wheel)"
        failed=$((failed + 1)); failures="$failures $v:install"; continue
    fi
    echo "-- [$v] venv with ${deps:-nothing else} and the wheel in $((SECONDS - t0))s"
    P="$venv/bin/python"
    for s in $steps; do
        case $s in
            smoke) step smoke "$v" 120 "$P" "$HERE/tests/smoke.py" ;;
            race) step race "$v" 300 "$P" "$HERE/tests/race.py" ;;
            frameworks) step frameworks "$v" 300 "$P" "$HERE/tests/frameworks.py" ;;
            cpython) step cpython-groups "$v" 900 "$P" "$HERE/tests/cpython_groups.py" --parallel ;;
            cpython-quick) step cpython-groups "$v" 300 "$P" "$HERE/tests/cpython_groups.py" \
                --loops asyncio,proactor --parallel ;;
            uvloop) step uvloop-suite "$v" 900 "$P" "$HERE/tests/uvloop_suite.py" --parallel ;;
            *) echo "unknown step $s"; failed=$((failed + 1)); failures="$failures $v:$s?" ;;
        esac
    done
done
echo
echo "proactor-py step times:$timings"
echo "proactor-py: CPython run:${found:+ $found} (full steps on $FULL); skipped:${skipped:- none}"
echo "proactor-py failures:${failures:- none}"
echo "$passed passed, $failed failed, in $((SECONDS - T0))s"
[ "$failed" -eq 0 ]
