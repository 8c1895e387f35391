#!/usr/bin/env bash
# Every benchmark in benchmarks/ on a GPU machine, at full model size (build preset sd15-random, train/eval preset
# zegclip-vitb16), then one dated section appended to benchmarks/RESULTS.md: the card (nvidia-smi), the exact
# commands, each script's status and time, and every RESULT line.
#
#   bash benchmarks/gpu_suite.sh               # from the repository root, after `make install`
#   bash benchmarks/gpu_suite.sh --dry-run     # print the commands only (works without a GPU)
#   bash benchmarks/gpu_suite.sh --no-append   # run, keep the section in the log folder, leave RESULTS.md alone
#   ONLY="bench_pairs bench_annotate" bash benchmarks/gpu_suite.sh   # a subset
#
# Environment: PYTHON (default .venv/bin/python), OUT_DIR (default out/gpu-suite-<UTC time>: one log per script
# and the section), ONLY (script names to run). Without an NVIDIA GPU that torch can use it stops at once with
# exit code 2; a script that fails is recorded as failed, the others still run, and the exit code is then 1.
set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=$(command -v python3)
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT_DIR=${OUT_DIR:-$ROOT/out/gpu-suite-$STAMP}
RESULTS=$ROOT/benchmarks/RESULTS.md
DRY_RUN=0
APPEND=1
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    --no-append) APPEND=0 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "gpu_suite.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

# Scripts in the order they run, each with its arguments. Presets are passed only to scripts whose --help
# offers --preset (bench_store measures storage and has none); a script not written yet is skipped.
SCRIPTS=(bench_store bench_pairs bench_annotate bench_factory bench_factory_memory bench_train bench_eval)
declare -A ARGS=(
  [bench_store]=""
  # 64 pairs, 8 per UNet batch, SD 1.5 fp16 512x512, 20 steps: ours vs two plain pipeline calls per pair
  [bench_pairs]="--preset sd15-random --pairs 64 --batch 8 --repeats 2"
  # Grounding DINO SwinT + SAM ViT-H at full size: batched vs the authors' per-image, per-box loop
  [bench_annotate]="--preset sd15-random --samples 64 --repeats 3"
  # plain loop vs the Prefect + Ray flow at full size (the tiny preset's default --set overrides do not apply)
  [bench_factory]="--preset sd15-random --no-default-sets --samples 64 --repeats 1"
  [bench_factory_memory]="--preset sd15-random --samples 16 --shard-size 4"
  # shard loader vs decode-only, and train steps of the real worker loop on ZegCLIP ViT-B/16 (random weights: no
  # download; FLOPs, not weights, matter here)
  [bench_train]="--preset zegclip-vitb16 --set model.weights=random --steps 20"
  # the mIoU confusion matrix vs mmseg's histc loop, and sliding-window inference (it has no --preset)
  [bench_eval]="--device cuda --images 16"
)

fail() { echo "gpu_suite.sh: $*" >&2; exit 2; }

# ------------------------------------------------------------------------------------------- the GPU check
CARD="(dry run)"
if [ "$DRY_RUN" = 0 ]; then
  command -v nvidia-smi >/dev/null 2>&1 \
    || fail "no nvidia-smi on PATH: this suite needs an NVIDIA GPU (CPU figures: run the scripts one by one, see benchmarks/README.md)"
  CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 | sed 's/[[:space:]]*$//')
  [ -n "$CARD" ] || fail "nvidia-smi lists no GPU: this suite needs an NVIDIA GPU"
  GPUS=$(nvidia-smi --query-gpu=name --format=csv,noheader | wc -l)
  DRIVER=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -n 1)
  MEMORY=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader | head -n 1)
  TORCH_INFO=$("$PYTHON" -c 'import torch, sys
if not torch.cuda.is_available():
    sys.exit("torch " + torch.__version__ + " cannot use the GPU (torch.cuda.is_available() is False)")
print("torch", torch.__version__, "CUDA", torch.version.cuda)') \
    || fail "the GPU is not usable from $PYTHON (see the line above)"
fi

[ "$DRY_RUN" = 1 ] || mkdir -p "$OUT_DIR"
SECTION=$OUT_DIR/section.md
SUMMARY=()
RESULT_LINES=()
FAILED=0

for name in "${SCRIPTS[@]}"; do
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then
    continue
  fi
  script=benchmarks/$name.py
  if [ ! -f "$script" ]; then
    echo "== $name: skipped ($script does not exist yet)"
    SUMMARY+=("| \`$name\` | - | skipped: script not written yet | - |")
    continue
  fi
  args=${ARGS[$name]}
  if [[ "$args" == *--preset* ]] && ! "$PYTHON" "$script" --help 2>/dev/null | grep -q -- "--preset"; then
    echo "== $name: its --help has no --preset; running it with its defaults"
    args=""
  fi
  cmd="$PYTHON $script $args"
  echo "== $name: $cmd"
  if [ "$DRY_RUN" = 1 ]; then
    continue
  fi
  log=$OUT_DIR/$name.log
  began=$SECONDS
  # shellcheck disable=SC2086  # args is a list of flags
  PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH} "$PYTHON" "$script" $args 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  took=$((SECONDS - began))
  if [ "$rc" = 0 ]; then status=ok; else status="FAILED (exit $rc)"; FAILED=1; fi
  SUMMARY+=("| \`$name\` | \`$args\` | $status | $took |")
  while IFS= read -r line; do RESULT_LINES+=("$line"); done < <(grep -E '^RESULT ' "$log")
  if [ "$rc" = 0 ] && ! grep -qE '^RESULT ' "$log"; then
    SUMMARY+=("| | | (no RESULT line printed) | |")
  fi
done

if [ "$DRY_RUN" = 1 ]; then
  echo "gpu_suite.sh: dry run, nothing ran"
  exit 0
fi

COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git status --porcelain 2>/dev/null | grep -q . && echo " (uncommitted changes)" || true)
{
  echo
  echo "## GPU suite — $(date -u +%Y-%m-%d), $CARD"
  echo
  echo "Command: \`bash benchmarks/gpu_suite.sh\` at commit \`$COMMIT\`$DIRTY, $(date -u '+%H:%M UTC'). Machine: $GPUS x"
  echo "\`$CARD\` ($MEMORY, driver $DRIVER, as \`nvidia-smi --query-gpu=name\` reports it), $(nproc) CPU cores,"
  echo "$TORCH_INFO, Python $("$PYTHON" -c 'import platform; print(platform.python_version())'). Logs: \`${OUT_DIR#"$ROOT"/}\`."
  echo
  echo "| script | arguments | status | seconds |"
  echo "| --- | --- | --- | --- |"
  printf '%s\n' "${SUMMARY[@]}"
  echo
  echo '```'
  if [ "${#RESULT_LINES[@]}" -gt 0 ]; then printf '%s\n' "${RESULT_LINES[@]}"; else echo "(no RESULT lines)"; fi
  echo '```'
} > "$SECTION"

if [ "$APPEND" = 1 ]; then
  cat "$SECTION" >> "$RESULTS"
  echo "gpu_suite.sh: appended to ${RESULTS#"$ROOT"/}:"
else
  echo "gpu_suite.sh: section written to $SECTION (RESULTS.md left alone):"
fi
cat "$SECTION"
exit "$FAILED"
