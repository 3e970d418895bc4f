#!/usr/bin/env bash
# One MaPLe and one PromptSRC training step (ViT-B/16 shapes with random weights, K = 100, batch 4
# as the official configs and batch 32), promptclip against the official step in PyTorch
# (bench/torch_deep_prompts.py), on this machine, in one run: step time, images per second and
# peak memory, each configuration in its own process; prints the ratios (> 1: promptclip faster,
# or using less memory). PYTHON=/path/to/python with torch and transformers.
# PROMPTCLIP_MEMORY_BUDGET_MB sets promptclip's memory budget (default 2048): the image tower's
# tape runs in chunks of images that fit it.
#   bash bench/deep_prompts.sh [batch sizes, default "4 32"]
set -euo pipefail
cd "$(dirname "$0")/.."
out="bench/results"; mkdir -p "$out"
ckpt="${TMPDIR:-/tmp}/promptclip-bench-ViT-B-16.safetensors"
host="$(rustc -vV | sed -n 's/^host: //p')"
cargo build --release -q -p promptclip-bench --target "$host"
bench_bin="${CARGO_TARGET_DIR:-./target}/$host/release/promptclip-bench"
echo "CPU: $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), $(nproc) cores"
: > "$out/deep-promptclip.jsonl"; : > "$out/deep-torch.jsonl"
for method in maple promptsrc; do
  for b in ${1:-4 32}; do
    "$bench_bin" deep-prompts "$ckpt" "$method" "$b" | tee -a "$out/deep-promptclip.jsonl"
    "${PYTHON:-python3}" bench/torch_deep_prompts.py fixtures/tiny-clip-hf "$method" "$b" | tee -a "$out/deep-torch.jsonl"
  done
done
node bench/ratios.mjs "$out/deep-promptclip.jsonl" "$out/deep-torch.jsonl"
