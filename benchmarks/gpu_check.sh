#!/usr/bin/env bash
# GPU readiness of tuneforge: one script for a CUDA machine with one or more GPUs.
#
#   benchmarks/gpu_check.sh              # the check (about 5-6 minutes on one H100/H200; capped at 9)
#   benchmarks/gpu_check.sh --dry-run    # print what it would run; needs no GPU
#
# Steps, each under its own timeout and all within GPU_CHECK_BUDGET seconds (default 540):
#   1. environment: nvidia-smi, torch.cuda.is_available(), bf16 support, GPU count
#   2. classification demo (configs/demo.yaml: MiniLM LoRA) on CUDA in bf16
#   3. chat demo (configs/demo-chat.yaml: SmolLM2 LoRA) on CUDA in bf16
#   4. SmolLM2 LoRA SFT real tokens/s: tuneforge vs Trainer + PEFT (defaults, and padding-free
#      DataCollatorWithFlattening) on the same GPU, bf16 (benchmarks/bench_sft.py --device cuda)
#   5. torchrun, one process per GPU: the demo's LoRA run on 1 GPU vs all GPUs (bench_distributed.py --gpus N)
# Prints one summary table and writes it to benchmarks/results/gpu_check.md; logs of every step go to
# benchmarks/results/gpu_check-logs/. A failed or timed-out step is reported in the table; the others still run.
# Environment: GPU_CHECK_BUDGET (seconds, default 540), GPU_CHECK_REPEATS (bench_sft repeats, default 1),
# GPU_CHECK_COPY_TO (a folder that receives a copy of the table, logs and result files at the end).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

DRY_RUN=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    -h | --help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$arg' (use --dry-run or --help)" >&2; exit 2 ;;
  esac
done

PY=${GPU_CHECK_PYTHON:-.venv/bin/python}  # (override for testing the script's own flow)
BUDGET=${GPU_CHECK_BUDGET:-540}
REPEATS=${GPU_CHECK_REPEATS:-1}
RESULTS=benchmarks/results
OUT=$RESULTS/gpu_check.md
LOGS=$RESULTS/gpu_check-logs
RUNS=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
trap 'rm -rf "$RUNS"' EXIT
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONWARNINGS=ignore
START=$SECONDS
ROWS=()  # "step|status|seconds|result" per step
STEP_STATUS=""
STEP_SECONDS=0

say() { printf '%s\n' "$*" >&2; }

# run_step NAME LIMIT CMD...: run CMD with a timeout of LIMIT seconds (capped by what is left of the budget),
# output to $LOGS/NAME.log; sets STEP_STATUS and STEP_SECONDS and always returns 0.
run_step() {
  local name=$1 limit=$2 left rc=0 t0
  shift 2
  left=$((BUDGET - (SECONDS - START)))
  if ((limit > left)); then
    limit=$left
  fi
  if ((DRY_RUN)); then
    say "[dry-run] $name (timeout ${limit}s): $*"
    STEP_STATUS="dry-run"
    STEP_SECONDS=0
    return 0
  fi
  if ((limit < 30)); then
    STEP_STATUS="skipped: budget spent"
    STEP_SECONDS=0
    return 0
  fi
  say "== $name (timeout ${limit}s): $*"
  t0=$SECONDS
  timeout --kill-after=15 "$limit" "$@" >"$LOGS/$name.log" 2>&1 || rc=$?
  STEP_SECONDS=$((SECONDS - t0))
  case $rc in
    0) STEP_STATUS="ok" ;;
    124 | 137) STEP_STATUS="timed out (${limit} s)" ;;
    *)
      STEP_STATUS="failed (exit $rc)"
      tail -n 25 "$LOGS/$name.log" >&2 || true
      ;;
  esac
  return 0
}

# result KIND PATH: one line of what a finished step measured (read from its metrics.json / results JSON).
result() {
  if ((DRY_RUN)) || [[ ! -f $2 ]]; then
    echo "—"
    return 0
  fi
  "$PY" - "$1" "$2" <<'PYEOF' || echo "(could not read $2)"
import json, sys
kind, path = sys.argv[1], sys.argv[2]
d = json.load(open(path))
if kind == "demo":
    t = d["test_after"]
    memory = "peak GPU memory" if d["device"].startswith("cuda") else "peak RSS"
    print(f"test accuracy {t['accuracy']:.4f}; {d['tokens_per_second']:,.0f} real tokens/s; train {d['train_seconds']:.1f} s; "
          f"{d['precision']} on {d['device']}; {memory} {d['peak_memory_mb']:,.0f} MiB")
elif kind == "chat":
    t, b = d["test_after"], d.get("test_before") or {}
    before = f" (before {b['perplexity']:.2f})" if b.get("perplexity") else ""
    print(f"test perplexity {t['perplexity']:.3f}{before}; BLEU {t.get('bleu', float('nan')):.2f}, ROUGE-L "
          f"{t.get('rouge_l', float('nan')):.3f}; {d['tokens_per_second']:,.0f} real tokens/s; {d['precision']} on {d['device']}")
elif kind == "sft":
    rows = {r["framework"]: r for r in d["summary"] if r["method"] == "lora"}
    tf = rows["tuneforge"]
    precision = d["settings"]["precision"]
    rate = d["matmul_rates"][{"bf16": "bfloat16", "fp32": "float32"}[precision]]["flops"]
    parts = [f"tuneforge {tf['tokens_per_second']:,.0f} real tokens/s (ppl {tf['test_perplexity']:.3f}, MFU "
             f"{100 * tf['mfu']:.2f} % of the measured {precision} matmul rate, {rate / 1e12:,.2f} TFLOP/s)"]
    for fw, name in (("trainer", "Trainer + PEFT"), ("trainer_flat", "Trainer + PEFT flattening")):
        if fw in rows:
            r = rows[fw]
            parts.append(f"{name} {r['tokens_per_second']:,.0f} (ppl {r['test_perplexity']:.3f}; "
                         f"tuneforge {r['tuneforge_speedup']:.2f}×)")
    gpu = tf.get("peak_gpu_memory_mb")
    print("; ".join(parts) + (f"; tuneforge peak GPU memory {gpu:,.0f} MiB" if gpu is not None else ""))
elif kind == "dist":
    rows = d["summary"]
    print("; ".join(f"{r['name']}: {r['tokens_per_second']:,.0f} real tokens/s, efficiency "
                    f"{100 * r['efficiency']:.0f} %, accuracy {r['test_accuracy']:.4f}" for r in rows))
PYEOF
}

add_row() { ROWS+=("$1|$STEP_STATUS|$STEP_SECONDS|$2"); }

# -- 0. the virtual environment ------------------------------------------------------------------------------
if [[ ! -x $PY ]]; then
  if ((DRY_RUN)); then
    say "[dry-run] $PY missing: would run make install"
  else
    say "$PY missing: make install"
    make install
  fi
fi
if ((DRY_RUN)); then  # what can be checked without a GPU: the benchmark scripts parse their flags
  "$PY" benchmarks/bench_sft.py --help >/dev/null
  "$PY" benchmarks/bench_distributed.py --dry-run --gpus "${GPU_CHECK_DRY_RUN_GPUS:-1}" >&2
else
  mkdir -p "$LOGS"
fi

# -- 1. environment ------------------------------------------------------------------------------------------
NGPU=0
if ((DRY_RUN)); then
  say "[dry-run] would check: nvidia-smi -L; $PY -c 'torch.cuda.is_available(), device_count(), is_bf16_supported()'"
  NGPU=${GPU_CHECK_DRY_RUN_GPUS:-1}
  ENV_LINE="dry-run"
else
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    say "gpu_check.sh: nvidia-smi not found: this is not a CUDA machine (or the NVIDIA driver is missing)"
    exit 1
  fi
  if ! timeout 60 nvidia-smi -L >"$LOGS/nvidia-smi.log" 2>&1; then
    say "gpu_check.sh: nvidia-smi failed:"
    cat "$LOGS/nvidia-smi.log" >&2
    exit 1
  fi
  if ! ENV_LINE=$(timeout 120 "$PY" -c '
import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} sees no CUDA device (a CPU-only build? install a CUDA build of torch==2.13.0 in .venv)")
n = torch.cuda.device_count()
names = ", ".join(sorted({torch.cuda.get_device_name(i) for i in range(n)}))
print(n, f"{n} x {names}; torch {torch.__version__}, CUDA {torch.version.cuda}; bf16 {torch.cuda.is_bf16_supported()}")
' 2>"$LOGS/torch.log"); then
    say "gpu_check.sh: torch cannot use CUDA:"
    cat "$LOGS/torch.log" >&2
    exit 1
  fi
  NGPU=${ENV_LINE%% *}
  ENV_LINE=${ENV_LINE#* }
  say "GPUs: $ENV_LINE"
fi
STEP_STATUS=$([[ $DRY_RUN == 1 ]] && echo dry-run || echo ok)
STEP_SECONDS=$((SECONDS - START))
add_row "environment" "$ENV_LINE"

# -- 2. classification demo on CUDA, bf16 ----------------------------------------------------------------------
run_step demo 150 "$PY" -m tuneforge train -c configs/demo.yaml -o "$RUNS/demo" --overwrite -q \
  train.device=cuda train.precision=bf16
add_row "classification demo (configs/demo.yaml, MiniLM LoRA)" "$(result demo "$RUNS/demo/metrics.json")"

# -- 3. chat demo on CUDA, bf16 --------------------------------------------------------------------------------
run_step demo-chat 180 "$PY" -m tuneforge train -c configs/demo-chat.yaml -o "$RUNS/chat" --overwrite -q \
  train.device=cuda train.precision=bf16
add_row "chat demo (configs/demo-chat.yaml, SmolLM2 LoRA)" "$(result chat "$RUNS/chat/metrics.json")"

# -- 4. SmolLM2 LoRA: tuneforge vs Trainer + PEFT on the same GPU -------------------------------------------------
run_step sft 300 "$PY" benchmarks/bench_sft.py --device cuda --precision bf16 --methods lora \
  --repeats "$REPEATS" --output "$RESULTS/gpu_check-sft.md"
add_row "SmolLM2 LoRA SFT vs Trainer + PEFT (same GPU, bf16)" "$(result sft "$RESULTS/gpu_check-sft.json")"

# -- 5. torchrun, one process per GPU ----------------------------------------------------------------------------
run_step torchrun 200 "$PY" benchmarks/bench_distributed.py --gpus "$NGPU" --repeats 1 --precision bf16 \
  --output "$RESULTS/gpu_check-distributed.md"
add_row "torchrun, one process per GPU ($NGPU), demo LoRA" "$(result dist "$RESULTS/gpu_check-distributed.json")"

# -- summary ------------------------------------------------------------------------------------------------------
{
  echo "# GPU check"
  echo
  echo "\`benchmarks/gpu_check.sh\` on $(hostname) at $(date -u '+%Y-%m-%d %H:%M UTC'), total $((SECONDS - START)) s."
  echo
  echo "| step | status | seconds | result |"
  echo "|---|---|---|---|"
  for row in "${ROWS[@]}"; do
    IFS='|' read -r step status secs res <<<"$row"
    echo "| $step | $status | $secs | $res |"
  done
  echo
  echo "Logs: \`$LOGS/\`. Step 4 details: \`$RESULTS/gpu_check-sft.md\`; step 5: \`$RESULTS/gpu_check-distributed.md\`."
} >"$RUNS/summary.md"
cat "$RUNS/summary.md"
if ((DRY_RUN)); then
  say "[dry-run] would write $OUT"
else
  cp "$RUNS/summary.md" "$OUT"
  say "wrote $OUT"
  if [[ -n ${GPU_CHECK_COPY_TO:-} ]]; then
    mkdir -p "$GPU_CHECK_COPY_TO"
    cp -r "$OUT" "$LOGS" "$GPU_CHECK_COPY_TO"/
    cp "$RESULTS"/gpu_check-*.md "$RESULTS"/gpu_check-*.json "$GPU_CHECK_COPY_TO"/ 2>/dev/null || true
  fi
fi
# exit status: 0 when every step passed
for row in "${ROWS[@]}"; do
  IFS='|' read -r _ status _ _ <<<"$row"
  if [[ $status != ok && $status != dry-run ]]; then
    exit 1
  fi
done
