#!/usr/bin/env bash
# Tip-Adapter-F's fine-tuning (16 shots x 100 classes, features already computed, 20 epochs) and
# Tip-Adapter's cache (32 images, 10 augmented passes, ViT-B/16 with random weights): promptclip
# vs the official PyTorch loop, on this machine, in one run; prints the ratios (> 1: promptclip
# faster). PYTHON=/path/to/python with torch, torchvision, pillow and transformers.
#   bash bench/adapters.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out="bench/results"; mkdir -p "$out"
ckpt="${TMPDIR:-/tmp}/promptclip-bench-ViT-B-16.safetensors"
host="$(rustc -vV | sed -n 's/^host: //p')"
cargo build --release -q -p promptclip-bench --target "$host"
bench_bin="${CARGO_TARGET_DIR:-./target}/$host/release/promptclip-bench"
echo "CPU: $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), $(nproc) cores"
"$bench_bin" tip-adapter "$ckpt" fixtures/images | tee "$out/adapters-promptclip.jsonl"
"${PYTHON:-python3}" bench/torch_tip_adapter.py fixtures/images | tee "$out/adapters-torch.jsonl"
node bench/ratios.mjs "$out/adapters-promptclip.jsonl" "$out/adapters-torch.jsonl"
