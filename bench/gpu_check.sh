#!/usr/bin/env bash
# GPU checks in one prepared script (about 10 minutes on one H100):
#   1. the GPU-marked tests;
#   2. bench/step_bench.py --device cuda with Llama-style LLMs built from configs (no downloads)
#      of about 0.5B, 1.5B and 7B parameters at the paper's batch of 256 (bf16 training steps:
#      naive, shared prompt KV eager, replayed from a CUDA graph, and graphed + torch.compile; the
#      shared ones with the structured packed attention and with dense masked attention), giving step
#      time, clips/s, peak GPU memory and MFU, and the LLM part alone (its share of the step and the
#      MFU of its own work: the ceiling of the whole step's), and where the best mode's kernel time
#      goes (by category, and the largest kernels);
#   3. one short fold with DeepSpeed ZeRO-3 on a small synthetic cache.
# Results: bench/results/gpu_bench.json (or --out FILE). Every part runs even when an earlier one
# failed (a lease is short: one call should say everything); the JSON records each part's status and
# the script exits 1 at the end if any part failed. --logs DIR keeps the parts' logs.
#
# Without CUDA (or with --reduced) it runs a reduced mode that checks the script itself on the CPU:
# the GPU tests (which skip), a tiny-LLM step bench, and the ZeRO-3 fold on CPU with gloo. The
# reduced mode writes to a temporary file unless --out is given, so it never overwrites GPU figures.
#
#   bash bench/gpu_check.sh                 # full on a GPU machine, reduced elsewhere
#   bash bench/gpu_check.sh --reduced --out /tmp/gpu_bench.json
#   bash bench/gpu_check.sh --full --out "$OUT/gpu_bench.json" --logs "$OUT"
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
PY=${PYTHON:-$here/.venv/bin/python}
[ -x "$PY" ] || PY=python3
AULLM=("$PY" -m orchestration.cli)

mode=auto
out=""
logs=""
while [ $# -gt 0 ]; do
  case "$1" in
    --reduced) mode=reduced ;;
    --full) mode=full ;;
    --out) out=$2; shift ;;
    --logs) logs=$2; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (expected --reduced, --full, --out FILE, --logs DIR)" >&2; exit 2 ;;
  esac
  shift
done

has_cuda=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))')
if [ "$mode" = auto ]; then
  if [ "$has_cuda" = 1 ]; then mode=full; else mode=reduced; fi
fi
if [ "$mode" = full ] && [ "$has_cuda" != 1 ]; then
  echo "gpu_check.sh: --full needs a CUDA device; none is visible (use --reduced)" >&2
  exit 2
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/aullm-gpu-check.XXXXXX")
keep_logs() {
  if [ -n "$logs" ]; then mkdir -p "$logs" && cp "$work"/*.log "$logs"/ 2>/dev/null || true; fi
  rm -rf "$work"
}
trap keep_logs EXIT
if [ -z "$out" ]; then
  if [ "$mode" = full ]; then out=bench/results/gpu_bench.json; else out=$work/gpu_bench.json; fi
fi
export RAY_AUTH_MODE=disabled MLFLOW_DISABLE_TELEMETRY=true MASTER_ADDR=127.0.0.1 TOKENIZERS_PARALLELISM=false
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$HOME/.cache/aullm/torch_extensions}
start=$(date +%s)
echo "== gpu_check: mode $mode"

echo "== 1/3 GPU-marked tests"
set +e
# only the files that hold GPU tests: the others import the sweep stack (Ray, MLflow), which a GPU
# image need not carry
mapfile -t gpu_files < <(grep -l "pytest.mark.gpu" tests/*.py)
"$PY" -m pytest -q -m gpu -p no:cacheprovider "${gpu_files[@]}" > "$work/pytest.log" 2>&1
tests_rc=$?
tail -n 3 "$work/pytest.log"
# pytest exits 5 when every GPU test was deselected; skipped tests exit 0
if [ "$tests_rc" = 5 ]; then tests_rc=0; fi
[ "$tests_rc" = 0 ] || { grep -E "^(FAILED|ERROR)" "$work/pytest.log" >&2; echo "gpu_check.sh: GPU tests failed (exit $tests_rc)" >&2; }

echo "== 2/3 step bench"
if [ "$mode" = full ]; then
  "$PY" bench/step_bench.py --device cuda --sizes 0.5b 1.5b 7b --batches 256 --repeats 10 --parts --profile \
    --modes naive shared_dense shared shared_graph_dense shared_graph shared_graph_compiled_dense shared_graph_compiled \
    --out "$work/step.json" 2>&1 | tee "$work/step_bench.log"
else
  "$PY" bench/step_bench.py --quick --sizes tiny --batches 8 --repeats 1 --parts --profile --out "$work/step.json" 2>&1 | tee "$work/step_bench.log"
fi
step_rc=${PIPESTATUS[0]}
[ "$step_rc" = 0 ] || echo "gpu_check.sh: step bench failed (exit $step_rc)" >&2

echo "== 3/3 ZeRO-3 fold"
device=cpu; [ "$mode" = full ] && device=cuda
fold_start=$(date +%s.%N)
{ "${AULLM[@]}" data synth --style casme2 --subjects 3 --clips-per-subject 3 --out "$work/synth" --seed 0 --workers 1 &&
  "${AULLM[@]}" data cache --dataset casme2 --root "$work/synth" --out "$work/casme2.h5" --workers 1 &&
  fold_start=$(date +%s.%N) &&
  "${AULLM[@]}" train --cache "$work/casme2.h5" --protocol loso --preset quick --folds 1 --engine deepspeed \
    --set train.zero_stage=3 --set train.epochs=3 --set train.inner_val_share=0.0 --set train.precision=bf16 \
    --device "$device" --no-progress --out "$work/zero3"; } > "$work/zero3.log" 2>&1
zero3_rc=$?
fold_end=$(date +%s.%N)
[ "$zero3_rc" = 0 ] || { tail -n 20 "$work/zero3.log" >&2; echo "gpu_check.sh: ZeRO-3 fold failed (exit $zero3_rc)" >&2; }
set -e

"$PY" - "$work" "$out" "$mode" "$tests_rc" "$step_rc" "$zero3_rc" "$fold_start" "$fold_end" "$start" <<'PYEOF'
import json, pathlib, sys, time

from aullm_core.atomic import atomic_write_text
work, out, mode, tests_rc, step_rc, zero3_rc, fold_start, fold_end, start = sys.argv[1:]
work = pathlib.Path(work)
step_file = work / "step.json"
step = json.loads(step_file.read_text()) if step_file.exists() else {"sizes": {}}
sizes = {}
for name, res in step["sizes"].items():
    for batch, row in res["batches"].items():
        modes = [m for m in step["modes"] if f"{m}_s" in row]
        if "best_shared_mode" not in row:  # every shared mode failed: step_bench's errors say why
            sizes[f"{name}_b{batch}"] = {"modes": {m: {"step_s": row[f"{m}_s"]} for m in modes}}
            continue
        best = row["best_shared_mode"]  # shared prompt KV, CUDA-graphed (and compiled) on a GPU
        sizes[f"{name}_b{batch}"] = {
            "llm_params": res["llm"]["params"],
            "batch": int(batch),
            "model_tflop_per_step": row[f"{best}_model_tflop"],
            "best_mode": best,
            "step_s": row[f"{best}_s"],
            "clips_per_s": row[f"{best}_clips_per_s"],
            "peak_mem_gib": row[f"{best}_peak_mem_gib"],
            "mfu": row[f"{best}_mfu"],
            "speedup_vs_naive": row.get("speedup"),
            "max_abs_logit_diff": row["max_abs_logit_diff"],
            "llm_part": {k[len("llm_part_"):]: row[k] for k in ("llm_part_mode", "llm_part_s", "llm_part_mfu") if k in row},
            "profile": row.get("profile"),
            "modes": {m: {"step_s": row[f"{m}_s"], "mfu": row[f"{m}_mfu"], "peak_mem_gib": row[f"{m}_peak_mem_gib"]}
                      for m in modes},
        }
preds = list((work / "zero3").rglob("*.csv")) if (work / "zero3").exists() else []
summary = {
    "mode": mode,
    "device": step.get("device"),
    "torch": step.get("torch"),
    "dtype": step.get("dtype"),
    "step": step.get("step"),
    "gpu_tests_exit": int(tests_rc),
    "step_bench_exit": int(step_rc),
    "step_bench_errors": step.get("errors", []),
    "sizes": sizes,
    "zero3_fold": {
        "exit": int(zero3_rc),
        "ok": int(zero3_rc) == 0 and bool(preds),
        "seconds": round(float(fold_end) - float(fold_start), 2),
        "prediction_files": len(preds),
    },
    "total_s": round(time.time() - float(start), 1),
}
out = pathlib.Path(out)
atomic_write_text(out, json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))
failed = [part for part, ok in (("GPU tests", int(tests_rc) == 0), ("step bench", int(step_rc) == 0),
                                ("ZeRO-3 fold", summary["zero3_fold"]["ok"])) if not ok]
if failed:
    sys.exit(f"gpu_check.sh: failed: {', '.join(failed)} (results in {out})")
PYEOF
echo "== gpu_check: done in $(( $(date +%s) - start )) s, results in $out"
