#!/usr/bin/env bash
# `make test`: the suite in three phases at once (tests/support/scheduling.py says which test
# runs where):
#   - parallel: every test not marked `serial`, on $TEST_WORKERS pytest-xdist workers
#     (--dist loadgroup keeps each xdist group on one worker), at the lowest CPU priority
#     (nice 19, inherited by every process it starts): it is CPU-bound and takes what the
#     serial lanes leave;
#   - two serial lanes at normal priority, each one test at a time: `process` (the
#     timing-sensitive tests on model-server processes) and `docker` (those on the Docker
#     Engine and the swarm). They wait on paced load, step timers and scale-down delays
#     (together about half a core), and preempt the parallel phase when they wake.
# Each lane's output follows the parallel phase's. SERIAL_AFTER=1 runs the serial lanes
# after the parallel phase instead, one after the other, alone on the cores (to tell a
# timing failure from contention; about twice as long).
# Every phase runs even if another fails; the run fails if any does. A phase that runs no
# test (pytest's exit 5) fails the run too, unless arguments chose a part of the suite
# (`make test PYTEST_ARGS=tests/service`) and another phase ran tests.
# TEST_WORKERS=0 runs the parallel phase in one process, without xdist.
set -u
cd "$(dirname "$0")/.."
python=.venv/bin/python
workers=${TEST_WORKERS:-4}
# --durations: what CI prints about the slowest tests, to keep the suite under its budget.
pytest=("$python" -m pytest -q -p no:cacheprovider --durations=12)
lanes=(process docker)

started=$(date +%s)
logs=()
run_lane() {  # run_lane LANE ARGS...: one serial lane's tests, one at a time
    local lane=$1 began=$(date +%s)
    shift
    local marks="serial and not docker"
    [ "$lane" = docker ] && marks="serial and docker"
    "${pytest[@]}" -m "$marks" "$@"
    local code=$?
    echo "serial lane $lane: exit $code, $(( $(date +%s) - began )) s"
    return $code
}
codes=()
if [ "${SERIAL_AFTER:-0}" = 1 ]; then
    "${pytest[@]}" -n "$workers" --dist loadgroup -m "not serial" "$@"
    codes+=($?)
    for lane in "${lanes[@]}"; do
        echo "================================ serial lane $lane ================================"
        run_lane "$lane" "$@"
        codes+=($?)
    done
else
    # The parallel phase's own Postgres, at its priority (tests/support/phase_postgres.py),
    # unless a database was given: the machine's then serves the serial lanes alone.
    # Its replicas' containers get the least CPU weight (Docker's CpuShares 2 against the
    # lanes' 1024): every container sits in one cgroup beside the others, whatever the nice
    # of the test that asked for it.
    phase_env=(GREENROOM_REPLICA_CPU_SHARES=2)
    if [ -z "${GREENROOM_TEST_DATABASE_URL:-}" ]; then
        pg_dir=$(mktemp -d --suffix=-greenroom-phase-pg)
        coproc PHASE_PG { exec nice -n 19 "$python" -m tests.support.phase_postgres "$pg_dir/pg" 2>"$pg_dir/log"; }
        pg_pid=$PHASE_PG_PID pg_in=${PHASE_PG[1]}
        if read -r -t 120 phase_dsn <&"${PHASE_PG[0]}" && [ -n "$phase_dsn" ]; then
            phase_env+=(GREENROOM_TEST_DATABASE_URL="$phase_dsn")
        else
            echo "make test: no Postgres of the parallel phase's own ($(tail -n 1 "$pg_dir/log"));" \
                 "it shares the machine's with the serial lanes"
        fi
    fi
    pids=()
    for lane in "${lanes[@]}"; do
        log=$(mktemp --suffix="-greenroom-$lane.log")
        logs+=("$log")
        run_lane "$lane" "$@" > "$log" 2>&1 &
        pids+=($!)
    done
    echo "make test: the serial lanes (${lanes[*]}) run beside this phase at normal" \
         "priority; their output follows this phase's (live: ${logs[*]})"
    env "${phase_env[@]}" nice -n 19 "${pytest[@]}" -n "$workers" --dist loadgroup \
        -m "not serial" "$@"
    codes+=($?)
    if [ -n "${pg_pid:-}" ]; then  # its stdin closes: it stops the cluster
        eval "exec $pg_in>&-"
        wait "$pg_pid"
        rm -rf "$pg_dir"
    fi
    echo "parallel phase: exit ${codes[0]}, $(( $(date +%s) - started )) s"
    for i in "${!lanes[@]}"; do
        wait "${pids[$i]}"
        codes+=($?)
        echo "================================ serial lane ${lanes[$i]} ================================"
        cat "${logs[$i]}"
        rm -f "${logs[$i]}"
    done
fi

# A phase's exit code → ok | failed: exit 5 (no test) is allowed only for a part of the
# suite, and only if another phase ran tests.
any_ran=0
for code in "${codes[@]}"; do [ "$code" -eq 0 ] && any_ran=1; done
verdicts=() failed=0
for code in "${codes[@]}"; do
    if [ "$code" -eq 0 ] || { [ "$code" -eq 5 ] && [ $# -gt 0 ] && [ "$any_ran" = 1 ]; }; then
        verdicts+=("exit $code (ok)")
    else
        verdicts+=("exit $code (failed)")
        failed=1
    fi
done
echo "make test: parallel phase ${verdicts[0]}, serial lane process ${verdicts[1]}," \
     "serial lane docker ${verdicts[2]}, $(( $(date +%s) - started )) s in all"
[ "$failed" = 0 ]
