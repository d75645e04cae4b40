#!/bin/bash
# convt_28 on two built checkouts, A and B, in alternating bursts of bench/host_phases.py (4
# blocks each, ROUNDS times), each line tagged A or B: split the blocks by the ping-pong column
# (< 150 ns: the vCPUs on cores that share an L3; more: apart) and compare A and B within each.
# Run from the repository root with nothing else on the machine (bench/RESULTS.md, eleventh
# session: polywino's schedules, dynamic (A) against static (B)).
#
#   gcc -O2 -o /tmp/host_gaps bench/host_gaps.c -lpthread
#   gcc -O2 -o /tmp/host_pingpong bench/host_pingpong.c -lpthread
#   bash bench/schedule_phase_ab.sh CHECKOUT_A CHECKOUT_B [ROUNDS] > out.txt
A=${1:?usage: bash bench/schedule_phase_ab.sh CHECKOUT_A CHECKOUT_B [ROUNDS]}
B=${2:?usage: bash bench/schedule_phase_ab.sh CHECKOUT_A CHECKOUT_B [ROUNDS]}
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-python}
for r in $(seq 1 "${3:-6}"); do
    for tag in A B; do
        d=$A; [ $tag = B ] && d=$B
        (cd "$d" && PYTHONPATH="$d" "$PY" "$HERE/host_phases.py" --blocks 4 2>&1 | grep "^time" |
         sed "s/^/$tag /")
    done
done
