#!/usr/bin/env bash
# The one-GPU performance suite (benchmarks/gpu_suite.py): paired SD pairs/s and its FLOP-bound ratio, the
# annotate stage's samples/s and GPU share, ZegCLIP ViT-B/16 training steps/s and evaluation windows/s, peak GPU
# memory of each, and every speed lever on against off. At most 8 minutes on one GPU, start-up included.
#
#   bash benchmarks/gpu_suite.sh                  # on a lent GPU, from the repository root, after `make install`
#   bash benchmarks/gpu_suite.sh --smoke          # the same script on the CPU with tiny models (CI runs this)
#   bash benchmarks/gpu_suite.sh --only pairs,annotate --budget-s 200
#
# Environment: PYTHON (default .venv/bin/python), OUT_DIR (default out/gpu-suite-<UTC time>): gpu_suite.json
# and gpu_suite.log go there. Exit codes: 0 all figures taken, 1 an item failed (the others still ran), 2 no GPU
# (without --smoke), 3 an item overran the budget and the run was cut (figures so far are kept).
set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=$(command -v python3)
OUT_DIR=${OUT_DIR:-$ROOT/out/gpu-suite-$(date -u +%Y%m%dT%H%M%SZ)}
case " $* " in
  *" -h "*|*" --help "*) sed -n '2,12p' "$0"; exec "$PYTHON" benchmarks/gpu_suite.py --help ;;
esac
LOG=$(mktemp)
PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH} "$PYTHON" benchmarks/gpu_suite.py --out "$OUT_DIR" "$@" \
  2> >(tee -a "$LOG" >&2) | tee -a "$LOG"
rc=${PIPESTATUS[0]}
# the suite makes OUT_DIR once it has a figure to write: a run refused at once (no GPU) leaves nothing behind
if [ -d "$OUT_DIR" ]; then mv "$LOG" "$OUT_DIR/gpu_suite.log"; else rm -f "$LOG"; fi
exit "$rc"
