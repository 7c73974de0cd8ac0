#!/usr/bin/env bash
# Proof that the general suite can fail: every deliberately broken build
# (the test-only `broken-*` features, see the README's "Mutants" table) is
# run against the general tests that must catch it — the sweep and the
# contract tests, not a test written for that mutant — and each of those
# test targets must FAIL, with a test failure, within the time limit.
#
# A target that passes is a mutant the suite misses; a build error or a
# target that hangs until the limit is not a catch either. Any of them
# makes this script exit 1 after the summary.
#
# Debug profile: `src/lib.rs` refuses the broken features in release.
# MUTANT_TIMEOUT (seconds, default 300) bounds each test target's run;
# MUTANTS="feature ..." runs only those.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# feature -> the general test targets that must each fail with it.
declare -A CATCHERS=(
  [broken-pause-cancels]="contract_read sim_sweep"
  [broken-early-delivery]="contract_read sim_sweep"
  [broken-pause-drops-ready]="contract_read sim_sweep"
  [broken-double-recv]="contract_read"
  [broken-error-as-eof]="contract_read"
  [broken-switch-tail-to-old]="contract_buffered tls_contract"
  [broken-scheduled-handshake]="tls_contract"
  [broken-tls-pause-leaks]="tls_contract"
  [broken-multishot-drops-after-pause]="contract_read sim_sweep"
)
ORDER=(broken-pause-cancels broken-early-delivery broken-pause-drops-ready
  broken-double-recv broken-error-as-eof broken-switch-tail-to-old
  broken-scheduled-handshake broken-tls-pause-leaks
  broken-multishot-drops-after-pause)

limit=${MUTANT_TIMEOUT:-300}
selected=(${MUTANTS:-${ORDER[@]}})
# The whole matrix: no narrowing left over from a debugging session.
unset PROACTOR_SIM_SEED PROACTOR_TEST_DRIVERS
logs=$(mktemp -d "${TMPDIR:-/tmp}/proactor-mutants.XXXXXX")
summary=()
failed=0
started=$SECONDS

for feature in "${selected[@]}"; do
  targets=${CATCHERS[$feature]:-}
  if [[ -z $targets ]]; then
    echo "unknown mutant: $feature" >&2
    exit 2
  fi
  echo "=== $feature: must fail $targets"
  test_args=()
  for t in $targets; do test_args+=(--test "$t"); done
  if ! cargo test --quiet --features "$feature" --no-run "${test_args[@]}" \
    >"$logs/$feature.build" 2>&1; then
    tail -n 30 "$logs/$feature.build"
    summary+=("$feature | (build) | BUILD FAILED |  | see above")
    failed=1
    continue
  fi
  for t in $targets; do
    log="$logs/$feature.$t"
    t0=$SECONDS
    timeout --kill-after=10 "$limit" \
      cargo test --quiet --features "$feature" --test "$t" >"$log" 2>&1
    rc=$?
    took=$((SECONDS - t0))
    # The first failure: where it panicked, its message, and the driver or
    # sim seed (the matrix prints "<test> failed on driver X" / "on sim seed N").
    where=$(grep -m1 -o "panicked at [^ ]*" "$log" | sed 's/panicked at //; s/:$//')
    message=$(grep -m1 -A2 "panicked at" "$log" | sed -n '2{/:$/{N;s/\n/ /};p}' | cut -c1-160)
    # Every test of the target that failed (libtest's closing list).
    tests=$(sed -n '/^failures:$/,/^test result/p' "$log" | grep -E '^    [a-z0-9_]+$' |
      sort -u | tr -d ' ' | paste -sd, -)
    on=$(grep -m1 -E "failed on (driver|sim seed)|sim sweep failed on seed" "$log" |
      sed 's/; replay with://' | cut -c1-100)
    if [[ $rc -eq 124 || $rc -eq 137 ]]; then
      verdict="HUNG (no failure within ${limit}s)"
      failed=1
    elif [[ $rc -eq 0 ]]; then
      verdict="MISSED (passed)"
      failed=1
    elif [[ -n $where ]]; then
      verdict="caught"
    else
      verdict="FAILED WITHOUT A TEST FAILURE (exit $rc)"
      failed=1
    fi
    echo "  $t: $verdict in ${took}s${on:+ — $on}${tests:+ (failed: $tests)}"
    [[ -n $message ]] && echo "    $message ($where)"
    if [[ $verdict != caught ]]; then tail -n 20 "$log"; fi
    summary+=("$feature | $t${tests:+ ($tests)} | $verdict | ${took}s | ${on:-?}: $message")
  done
done

echo
echo "=== mutants: feature | general test | verdict | time | first failure"
printf '%s\n' "${summary[@]}"
echo "total $((SECONDS - started))s"
if ((failed)); then
  echo "FAILED: a mutant was not caught by the general suite (see above; logs in $logs)"
  exit 1
fi
rm -rf "$logs"
echo "every mutant caught"
