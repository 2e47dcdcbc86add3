#!/usr/bin/env bash
# `make test`: the suite in two phases (tests/support/scheduling.py says which test runs where):
#   1. parallel: every test not marked `serial`, on $TEST_WORKERS pytest-xdist workers
#      (--dist loadgroup keeps each xdist group on one worker);
#   2. serial: the timing-sensitive `serial` tests, one at a time, after the parallel phase.
# SIDE_BY_SIDE=1 runs the serial phase beside the parallel one instead, its output printed
# after the parallel phase's, and the parallel phase at the lowest CPU priority (nice 19,
# inherited by every process it starts): it gets only the CPU the serial test leaves. It took 1,129-1,157 s for 845 tests (one after the other: 1,189 s for 805), but the
# serial tests' paced load keeps much of a core busy, and in one run of three the two-node
# swarm test lost two requests to the contention; so it is not the default.
# Both phases run even if one fails; the run fails if either does. A phase that runs no
# test (pytest's exit 5) fails the run too, unless arguments chose a part of the suite
# (`make test PYTEST_ARGS=tests/service`) and the other phase ran tests.
# TEST_WORKERS=0 runs both phases in one process each, without xdist.
set -u
cd "$(dirname "$0")/.."
python=.venv/bin/python
workers=${TEST_WORKERS:-4}
# --durations: what CI prints about the slowest tests, to keep the suite under its budget.
pytest=("$python" -m pytest -q -p no:cacheprovider --durations=12)

started=$(date +%s)
serial_log=$(mktemp --suffix=-greenroom-serial.log)
run_serial() {
    local began=$(date +%s)
    "${pytest[@]}" -m serial "$@"
    local code=$?
    echo "serial phase: exit $code, $(( $(date +%s) - began )) s"
    return $code
}
if [ "${SIDE_BY_SIDE:-0}" != 1 ]; then
    "${pytest[@]}" -n "$workers" --dist loadgroup -m "not serial" "$@"
    parallel=$?
    run_serial "$@"
    serial=$?
else
    echo "make test: the serial phase runs beside this one at normal priority;" \
         "its output follows this phase's (live: $serial_log)"
    run_serial "$@" > "$serial_log" 2>&1 &
    serial_pid=$!
    nice -n 19 "${pytest[@]}" -n "$workers" --dist loadgroup -m "not serial" "$@"
    parallel=$?
    echo "parallel phase: exit $parallel, $(( $(date +%s) - started )) s"
    wait "$serial_pid"
    serial=$?
    echo "================================ serial phase ================================"
    cat "$serial_log"
fi
rm -f "$serial_log"

verdict() {  # phase exit code → ok | failed, with exit 5 (no test) allowed only for a part
    if [ "$1" -eq 0 ] || { [ "$1" -eq 5 ] && [ $# -gt 1 ] && [ "$2" -eq 0 ]; }; then
        echo ok
    else
        echo failed
    fi
}
if [ $# -gt 0 ]; then  # a part of the suite: one phase may have nothing to run
    p=$(verdict "$parallel" "$serial") s=$(verdict "$serial" "$parallel")
else
    p=$(verdict "$parallel") s=$(verdict "$serial")
fi
echo "make test: parallel phase exit $parallel ($p), serial phase exit $serial ($s)," \
     "$(( $(date +%s) - started )) s in all"
[ "$p" = ok ] && [ "$s" = ok ]
