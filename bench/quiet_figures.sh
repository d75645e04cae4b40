#!/bin/bash
# The quiet figures of issues 14 and 16 in one go, as bench/RESULTS.md's session sections take
# them (run on a quiet machine, from the repository root; ~5 minutes on the 2-core EPYC):
#
#   bash bench/quiet_figures.sh OUT_DIR [LAST_CHECKOUT]
#
# issue 14's bench three times (set A) and its RoI / convt rows five times at --repeat 15
# (set C), an interleaved A/B of issue 16's layers against LAST_CHECKOUT (a built checkout of
# the last stop; skipped without one), training three times, the whole suite once; the
# one-core probe and the load before each run.  Then `python bench/quiet_summary.py OUT_DIR`
# prints the ratios (two ops' medians from one run's JSON) and the suite's geomean.
set -e
O=${1:?usage: bash bench/quiet_figures.sh OUT_DIR [LAST_CHECKOUT]}
LAST=$2
P=${PYTHON:-python}
mkdir -p "$O"
probe() {
    echo "probe $($P -c 'from convkit.benchmark.probe import core_probe; print(core_probe())' | tail -1)" \
         "load $(cut -d' ' -f1-3 /proc/loadavg) $(date -u +%H:%M:%S)"
}
echo "### issue 14, set A"
for i in 1 2 3; do
    probe
    $P -m convkit bench --ops convt_28,roi_align,roi_pool,roi_avg_pool,roi_max_align,deform_conv \
        --backends cpu,torch,numpy --only torch=convt_28 --only numpy=deform_conv --repeat 7 \
        --no-progress --json "$O/i14_$i.json" > "$O/i14_$i.txt" 2>&1
done
echo "### issue 14, set C"
for i in 1 2 3 4 5; do
    probe
    $P -m convkit bench --ops roi_align,roi_max_align,roi_pool,convt_28 --backends cpu,torch \
        --only torch=convt_28 --repeat 15 --no-progress --json "$O/c_$i.json" > "$O/c_$i.txt" 2>&1
done
if [ -n "$LAST" ]; then
    echo "### issue 16's layers: $LAST against this checkout, 5 rounds"; probe
    $P bench/ab_commits.py --a "$LAST" --b . --rounds 5 --out "$O/ab" -- \
        --ops vgg_56,res_28,res_14,rpn_3x3,stem_224,pw_14,rpn_cls1x1,convt_28,lenet_c1
fi
echo "### training"
for i in 1 2 3; do
    probe
    $P bench/bench_train.py --models lenet5 resnet --batch-size 64 128 --rounds 7 | grep "^| "
done
echo "### the suite"; probe
$P -m convkit bench --backends cpu,torch --repeat 7 --no-progress --json "$O/suite.json" \
    > "$O/suite.txt" 2>&1
probe
