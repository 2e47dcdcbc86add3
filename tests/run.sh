#!/usr/bin/env bash
# `make test`: the suite in two phases (tests/support/scheduling.py says which test runs where).
#   1. parallel: every test not marked `serial`, on $TEST_WORKERS pytest-xdist workers
#      (--dist loadgroup keeps each xdist group on one worker);
#   2. serial: the timing-sensitive `serial` tests, one at a time, after the first.
# Both phases run even if the first fails; the run fails if either does. A phase that
# runs no test (pytest's exit 5) fails the run too, unless arguments chose a part of
# the suite (`make test PYTEST_ARGS=tests/service`) and the other phase ran tests.
# TEST_WORKERS=0 runs both phases in one process each, without xdist.
set -u
cd "$(dirname "$0")/.."
python=.venv/bin/python
workers=${TEST_WORKERS:-4}
# --durations: what CI prints about the slowest tests, to keep the suite under its budget.
pytest=("$python" -m pytest -q -p no:cacheprovider --durations=12)

started=$(date +%s)
"${pytest[@]}" -n "$workers" --dist loadgroup -m "not serial" "$@"
parallel=$?
"${pytest[@]}" -m serial "$@"
serial=$?

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
