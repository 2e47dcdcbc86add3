#!/usr/bin/env bash
# `make test`: the suite in two phases (tests/support/scheduling.py says which test runs
# where):
#   1. parallel: every test not marked `serial`, on $TEST_WORKERS pytest-xdist workers
#      (--dist loadgroup keeps each xdist group on one worker);
#   2. serial: the timing-sensitive tests, one at a time, alone on the cores, those on the
#      Docker Engine last.
# SIDE_BY_SIDE=1 runs the serial phase beside the parallel one instead, at normal priority,
# its output printed after the parallel phase's, and the parallel phase at the lowest CPU
# priority (nice 19, inherited by every process it starts) on a Postgres of its own
# started at that priority (tests/support/phase_postgres.py): it takes what the serial
# phase leaves. On this 2-core machine that took 427-670 s for 869 tests, but a
# timing-sensitive test failed beside it in four runs of five (a good canary's p99 over
# 1.5x the serving one's, a panic scale-up, a swarm request lost; docs/development.md), so
# it is not the default.
# Both phases run even if one fails; the run fails if either does. A phase that runs no
# test (pytest's exit 5) fails the run too, unless arguments chose a part of the suite
# (`make test PYTEST_ARGS=tests/service`) and the other phase ran tests.
# TEST_WORKERS=0 runs the parallel phase in one process, without xdist.
set -u
cd "$(dirname "$0")/.."
python=.venv/bin/python
workers=${TEST_WORKERS:-4}
# --durations: what CI prints about the slowest tests, to keep the suite under its budget.
pytest=("$python" -m pytest -q -p no:cacheprovider --durations=12)

started=$(date +%s)
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
    phase_env=()
    # The phase's own Postgres, unless a database was given: the machine's then serves the
    # serial tests alone, and the phase's queries run at its priority.
    if [ -z "${GREENROOM_TEST_DATABASE_URL:-}" ]; then
        pg_dir=$(mktemp -d --suffix=-greenroom-phase-pg)
        coproc PHASE_PG { exec nice -n 19 "$python" -m tests.support.phase_postgres "$pg_dir/pg" 2>"$pg_dir/log"; }
        # (bash unsets both once the coprocess exits: a failed start leaves them empty)
        pg_pid=${PHASE_PG_PID:-} pg_in=${PHASE_PG[1]:-} pg_out=${PHASE_PG[0]:-}
        if [ -n "$pg_out" ] && read -r -t 120 phase_dsn <&"$pg_out" && [ -n "$phase_dsn" ]; then
            phase_env+=(GREENROOM_TEST_DATABASE_URL="$phase_dsn")
        else
            echo "make test: no Postgres of the parallel phase's own ($(tail -n 1 "$pg_dir/log"));" \
                 "it shares the machine's with the serial phase"
        fi
    fi
    serial_log=$(mktemp --suffix=-greenroom-serial.log)
    run_serial "$@" > "$serial_log" 2>&1 &
    serial_pid=$!
    echo "make test: the serial phase runs beside this one at normal priority;" \
         "its output follows this phase's (live: $serial_log)"
    env "${phase_env[@]}" nice -n 19 "${pytest[@]}" -n "$workers" --dist loadgroup \
        -m "not serial" "$@"
    parallel=$?
    if [ -n "${pg_dir:-}" ]; then  # its stdin closes: it stops the cluster
        [ -n "$pg_in" ] && eval "exec $pg_in>&-"
        [ -n "$pg_pid" ] && wait "$pg_pid"
        rm -rf "$pg_dir"
    fi
    echo "parallel phase: exit $parallel, $(( $(date +%s) - started )) s"
    wait "$serial_pid"
    serial=$?
    echo "================================ serial phase ================================"
    cat "$serial_log"
    rm -f "$serial_log"
fi

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
