#!/usr/bin/env bash
# Rebuild the shipped default model, models/guaita-r18-sim, from nothing but this repository:
# simulate varied nights from several simulated cameras, index them (g2 at 160 px), train a
# ResNet18 (from scratch or INIT_FROM), evaluate on held-out nights, export int8 and write the bundle.
#
#   training/recipes/shipped_model.sh                 # the settings the shipped bundle used
#   WORK=/data/guaita CAMERAS=24 NIGHTS=20 EPOCHS=30 training/recipes/shipped_model.sh   # a GPU box
#
# Every knob is an environment variable (below). Nothing is downloaded: no ImageNet weights are
# needed (--no-pretrained). Steps that already finished are skipped on a re-run (the simulator
# output and the preprocessed cache are reused), so an interrupted run can be resumed.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
GUAITA=${GUAITA:-"$REPO/.venv/bin/guaita"}
PYTHON=${PYTHON:-"$REPO/.venv/bin/python"}
WORK=${WORK:-/tmp/guaita-shipped}           # simulated frames, caches, model, reports
OUT=${OUT:-"$REPO/models/guaita-r18-sim"}   # the bundle
NAME=${NAME:-guaita-r18-sim}
VERSION=${VERSION:-3.6.0}

CAMERAS=${CAMERAS:-12}       # simulated sites: lens, skyline, light pollution differ
NIGHTS=${NIGHTS:-8}          # nights per camera (conditions drawn: clear/moon/cloudy/overcast)
FRAMES=${FRAMES:-300}        # frames per night (every 30 s from a random evening start)
RATE=${RATE:-0.25}           # meteors per frame, raised from a real ~0.01 so positives abound
WIDTH=${WIDTH:-1304}
HEIGHT=${HEIGHT:-976}
SIZE=${SIZE:-160}            # model input; 224 is ~2x slower to train on CPU
PREPROCESS=${PREPROCESS:-m1} # edge.preprocess variant (m1: full-resolution candidate tiles;
                             # g2: the whole sky at SIZE, the 1.0.0 bundle's)
TILES=${TILES:-4}            # m1: TILES x TILES candidate windows of SIZE/TILES px (6 at SIZE 240:
                             # 36 windows of 40 px, the next model's; see docs/training.md)
LINE_WIDTH=${LINE_WIDTH:-320} # g2/m1: the line map's width, px (640: finer candidates, see docs/training.md)
INIT_FROM=${INIT_FROM:-}     # warm start: an earlier bundle or `guaita train` folder (empty: scratch)
FREEZE=${FREEZE:-0}          # with INIT_FROM: head-only epochs first
MINE_FROM=${MINE_FROM:-}     # hard-negative mining: this bundle scores the training non-meteors
HARD_SHARE=${HARD_SHARE:-0.5} # with MINE_FROM: share of each epoch's non-meteors drawn by score
MIN_PEAK=${MIN_PEAK:-15}     # leave out meteors fainter than this (grey levels): invisible at SIZE
EPOCHS=${EPOCHS:-20}
BATCH=${BATCH:-32}
LR=${LR:-3e-3}
BALANCE=${BALANCE:-undersample}
NEG_RATIO=${NEG_RATIO:-3}   # non-meteors drawn per meteor each epoch
CALIB_IMAGES=${CALIB_IMAGES:-256} # int8 calibration images (1024 when export refuses a retrain)
THREADS=${THREADS:-2}
SEED=${SEED:-2026}
BALANCE_BY=${BALANCE_BY:-}   # e.g. condition,snr: held-out nights with all the nights' mix of
                             # skies and of how hard their meteors are to see (empty: the plain
                             # seeded draw, 3.6.0's; docs/training.md step 4)

UNTIL=${UNTIL:-5}            # stop after this step (e.g. 2: only simulate and index)
FROM_STEP=${FROM_STEP:-1}    # e.g. 4: re-export and re-evaluate an already trained $WORK/model
ALERT_RULE=${ALERT_RULE:-fp:0.003@0.9}  # the shipped threshold: <= 3 false alerts per 1,000
                             # frames at 90 % confidence (a margin for nights to come)
STAGE=${STAGE:-0}            # fit the logistic trail stage (edge/trail_stage.py, 2.1-2.2's) instead
CLASSIFIER=${CLASSIFIER:-1}  # give the bundle the trail classifier (edge/trail_classifier.py)
CLASSIFIER_EPOCHS=${CLASSIFIER_EPOCHS:-30}
CLASSIFIER_MEMBERS=${CLASSIFIER_MEMBERS:-3} # classifiers from seeds SEED, SEED+1, ... averaged
                             # in one graph (steadier at the strict end; K x the Pi's CNN time)
SEARCH_SEEDS=${SEARCH_SEEDS:-}     # the classifier's candidate search (empty: guaita trail-classifier's
TRACE_LEVEL=${TRACE_LEVEL:-}       # defaults, edge/candidates.py); the bundle records it, the Pi runs it
MAX_CANDIDATES=${MAX_CANDIDATES:-}
SOFT_FWHM=${SOFT_FWHM:-}           # lines this wide (px) ranked after the sharp ones (0: off, as <= 3.1.0)
STRIP_SAMPLING=${STRIP_SAMPLING:-mean} # strip samples along the line: the mean over its stretch
                             # (3.6.0's; faint long trails) or one point (<= 3.5.0; docs/training.md)
EXPORT=${EXPORT:-1}          # 0: keep the bundle already at $OUT (re-stage, re-threshold it)
FRESH=${FRESH:-4}            # cameras simulated for the final check alone (0: skip it)
VALID_EXTRA=${VALID_EXTRA:-4} # cameras simulated to add validation nights for the threshold

tiles=()  # the variant's own knobs
if [[ "$PREPROCESS" == m1 ]]; then tiles=(--tiles "$TILES"); fi
if [[ "$PREPROCESS" == m1 || "$PREPROCESS" == g2 ]]; then tiles+=(--line-width "$LINE_WIDTH"); fi

mkdir -p "$WORK"
log() { echo "[$(date +%H:%M:%S)] $*"; }

log "1/5 simulate $CAMERAS cameras x $NIGHTS nights x $FRAMES frames at ${WIDTH}x${HEIGHT}"
simulate_camera() {  # dir k: camera k's nights, unless already there
  if [[ -f "$1/truth.csv" ]]; then return; fi
  # Each camera gets its own seed (its own site) and its own dates, so night folders of two
  # cameras never share a name.
  "$PYTHON" - "$1" "$2" <<PY
import sys
from datetime import date, timedelta
from training.simulate import simulate
out, k = sys.argv[1], int(sys.argv[2])
simulate(out, nights=$NIGHTS, frames=$FRAMES, seed=$SEED + 101 * k, width=$WIDTH,
         height=$HEIGHT, start=date(2026, 9, 1) + timedelta(days=40 * k),
         meteor_rate=$RATE, progress=False)
PY
}
index_extra_cameras() {  # name first count split: simulate cameras first.., index all in split
  local more=() k
  for ((k = $2; k < $2 + $3; k++)); do
    simulate_camera "$WORK/sim-$1/camera$k" "$k"
    more+=(--truth "$WORK/sim-$1/camera$k/truth.csv")
  done
  "$GUAITA" dataset index "${more[@]}" --out "$WORK/data-$1" --preprocess "$PREPROCESS" \
    --size "$SIZE" "${tiles[@]}" --min-peak "$MIN_PEAK" --all-in "$4" --workers "$THREADS" --no-progress
}
truths=()
for ((k = 0; k < CAMERAS; k++)); do
  truths+=(--truth "$WORK/sim/camera$k/truth.csv")
  simulate_camera "$WORK/sim/camera$k" "$k"
done

log "2/5 index ($PREPROCESS, ${SIZE} px), split by whole nights"
"$GUAITA" dataset index "${truths[@]}" --out "$WORK/data" --preprocess "$PREPROCESS" --size "$SIZE" "${tiles[@]}" --min-peak "$MIN_PEAK" \
  --valid-frac 0.15 --test-frac 0.15 --seed "$SEED" ${BALANCE_BY:+--balance-by "$BALANCE_BY"} \
  --workers "$THREADS" --no-progress

if ((UNTIL < 3)); then exit 0; fi

init=()
if [[ -n "$INIT_FROM" ]]; then init=(--init-from "$INIT_FROM" --freeze-epochs "$FREEZE"); fi
if [[ -n "$MINE_FROM" ]]; then init+=(--mine-from "$MINE_FROM" --hard-share "$HARD_SHARE"); fi
if ((FROM_STEP <= 3)); then
  log "3/5 train resnet18 (${INIT_FROM:-from scratch}; $BALANCE, $EPOCHS epochs, lr $LR)"
  "$GUAITA" train --data "$WORK/data" --out "$WORK/model" --arch resnet18 --no-pretrained "${init[@]}" \
    --epochs "$EPOCHS" --batch-size "$BATCH" --no-lr-find --lr "$LR" --balance "$BALANCE" --neg-ratio "$NEG_RATIO" \
    --valid-max 600 --threads "$THREADS" --seed "$SEED" --quiet
fi

log "4/5 export: ONNX, int8 (calibrations compared), parity on test; threshold from pipeline alerts"
# Export's own threshold (classifier alone, at most 1 % of validation frames positive) is where
# int8 is checked against fp32. The shipped threshold is then chosen on what the Pi would do:
# the validation nights through the edge pipeline, suppression included, at most ALERT_RULE
# false alerts (satellites and aircraft that the rules remove no longer count against it).
if [[ "$EXPORT" == 1 ]]; then
  "$GUAITA" export --model "$WORK/model" --out "$OUT" --name "$NAME" --version "$VERSION" \
    --threshold-rule "${RULE:-fp:0.01}" --calib-images "$CALIB_IMAGES" --threads "$THREADS" \
    --seed "$SEED"
fi
if [[ "$STAGE" == 1 ]]; then
  # The trail stage re-scores the model's candidates by their trail's light profile (single-
  # frame satellites); fitted on the training nights, so the threshold stays a validation choice.
  "$GUAITA" trail-stage --data "$WORK/data" --bundle "$OUT" --out "$OUT" --version "$VERSION" \
    --threads "$THREADS" --report "$WORK/trail-stage.json"
fi
if [[ "$CLASSIFIER" == 1 ]]; then
  search=()
  if [[ -n "$SEARCH_SEEDS" ]]; then search+=(--seeds "$SEARCH_SEEDS"); fi
  if [[ -n "$TRACE_LEVEL" ]]; then search+=(--trace-level "$TRACE_LEVEL"); fi
  if [[ -n "$MAX_CANDIDATES" ]]; then search+=(--max-candidates "$MAX_CANDIDATES"); fi
  if [[ -n "$SOFT_FWHM" ]]; then search+=(--soft-fwhm "$SOFT_FWHM"); fi
  # The trail classifier looks along every candidate line of every frame (faint meteors the
  # network's windows miss, satellites' even light and cut-off ends); fitted on the training
  # nights, its weight beside the network's on the validation nights.
  "$GUAITA" trail-classifier --data "$WORK/data" --bundle "$OUT" --out "$OUT" \
    --version "$VERSION" --epochs "$CLASSIFIER_EPOCHS" --workers "$THREADS" --threads "$THREADS" \
    --seed "$SEED" --members "$CLASSIFIER_MEMBERS" "${search[@]}" \
    --strip-sampling "$STRIP_SAMPLING" --progress \
    --report "$WORK/trail-classifier.json"
fi
# False alerts cluster by night (a night of satellites), so 14 validation nights choose the
# threshold loosely: cameras 40, 41, ... add nights for the threshold alone (none trains).
extra=()
if ((VALID_EXTRA > 0)); then
  index_extra_cameras valid 40 "$VALID_EXTRA" valid
  extra=(--data "$WORK/data-valid")
fi
"$GUAITA" alert-threshold --bundle "$OUT" --data "$WORK/data" "${extra[@]}" --rule "$ALERT_RULE" \
  --workers "$THREADS" --report "$WORK/alerts.json"

log "5/5 evaluate fp32 learner and int8 bundle on the held-out test nights"
compared=(--model "$OUT")  # with the fp32 learner where this work folder still has it
if [[ -d "$WORK/model" ]]; then compared=(--model "$WORK/model" --model "$OUT"); fi
"$GUAITA" evaluate --data "$WORK/data" "${compared[@]}" \
  --out "$WORK/report" --threads "$THREADS" --workers "$THREADS"
"$GUAITA" evaluate --data "$WORK/data" --split valid --model "$OUT" \
  --out "$WORK/report-valid" --threads "$THREADS" --workers "$THREADS" --gallery 8
log "done: $OUT (report: $WORK/report/report.md)"

if [[ "${HOLDOUT:-1}" == 1 ]]; then
  # A site the model never saw (new seed: other skyline, lens, light pollution): how well does
  # it transfer before any fine-tuning?
  log "extra: an unseen camera, every night as test"
  dir="$WORK/sim/unseen"
  if [[ ! -f "$dir/truth.csv" ]]; then
    "$PYTHON" -c "
from datetime import date
from training.simulate import simulate
simulate('$dir', nights=4, frames=200, seed=$SEED + 9999, width=$WIDTH, height=$HEIGHT,
         start=date(2027, 3, 1), meteor_rate=$RATE, progress=False)"
  fi
  "$GUAITA" dataset index --truth "$dir/truth.csv" --out "$WORK/data-unseen" --preprocess "$PREPROCESS" \
    --size "$SIZE" "${tiles[@]}" --all-in test --workers "$THREADS" --no-progress
  "$GUAITA" evaluate --data "$WORK/data-unseen" --model "$OUT" --out "$WORK/report-unseen" \
    --threads "$THREADS" --workers "$THREADS" --gallery 8
fi

if ((FRESH > 0)); then
  # The last word: cameras simulated for this check alone (cameras 20, 21, ...: new sites, new
  # dates), every night test, used for no decision, the pipeline run as the Pi runs it.
  log "extra: $FRESH fresh cameras, every night test, alerts through the pipeline"
  index_extra_cameras fresh 20 "$FRESH" test
  "$GUAITA" evaluate --data "$WORK/data-fresh" --model "$OUT" --out "$WORK/report-fresh" \
    --alerts --threads "$THREADS" --workers "$THREADS" --gallery 8
fi

log "model card: $OUT/README.md"
cards=(--report "held-out test nights=$WORK/report" --report "validation nights (threshold chosen here)=$WORK/report-valid")
if [[ -f "$WORK/report-unseen/metrics.json" ]]; then
  cards+=(--report "an unseen camera (every night is test)=$WORK/report-unseen")
fi
if [[ -f "$WORK/report-fresh/metrics.json" ]]; then
  cards+=(--report "$FRESH fresh cameras (every night is test, used for no decision)=$WORK/report-fresh")
fi
# The test nights' curves go to docs/ (not into the bundle, which ships to every Pi).
cp "$WORK/report/pr.png" "$REPO/docs/img/shipped-model-pr.png"
cp "$WORK/report/roc.png" "$REPO/docs/img/shipped-model-roc.png"
cards+=(--figure "precision-recall on the test nights=../../docs/img/shipped-model-pr.png"
        --figure "ROC on the test nights=../../docs/img/shipped-model-roc.png")
"$PYTHON" -m training.model_card "$OUT" "${cards[@]}"
