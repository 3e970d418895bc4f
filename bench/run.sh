#!/usr/bin/env bash
# promptclip vs PyTorch + transformers, on this machine, in one run:
#   encoding throughput (images/s, prompts/s, preprocessing) at the given shapes, and for
#   ViT-B/16 the time of one CoOp training step (K = 100 classes, batch 32, M = 16) and the time
#   per image and peak memory of CoCoOp training (K = 50, batch 1 and 8); and the machine: the CPU
#   model and flags, the best fp32 sgemm rate of candle and of torch's BLAS here, and image
#   encoding in GFLOP/s as a share of it (bench/machine.mjs).
#   bash bench/run.sh [ViT-B/16]        (PYTHON=/path/to/python with torch + transformers)
# For the ResNets (bash bench/run.sh RN50 | RN101; PYTHON with torch + open_clip_torch +
# safetensors): image encoding throughput (batch 8, 224x224, fp32, all cores) of promptclip's
# ModifiedResNet and of open_clip's ("RN50-quickgelu", OpenAI's architecture) with the SAME random
# checkpoint loaded into both, text encoding (open_clip padded to 77 and cut to the longest
# prompt), and as a check the largest difference between the two implementations' image
# features of a fixed batch.
# The Rust build goes to $CARGO_TARGET_DIR when it is set (./target otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."
arch="${1:-ViT-B/16}"
out="bench/results"; mkdir -p "$out"
ckpt="${TMPDIR:-/tmp}/promptclip-bench-$(echo "$arch" | tr '/' '-').safetensors"
# The same --target as `napi build`, so the release dependencies are shared with the addon.
host="$(rustc -vV | sed -n 's/^host: //p')"
cargo build --release -q -p promptclip-bench --target "$host"
bench_bin="${CARGO_TARGET_DIR:-./target}/$host/release/promptclip-bench"
# The machine, as every figure must name it: the CPU model and the vector units that matter.
flags="$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -xE 'avx2|fma|avx512f|avx512_bf16|avx512_vnni|avx512_fp16|amx_tile|amx_bf16' | tr '\n' ' ')"
echo "CPU: $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), $(nproc) cores; flags: ${flags:-none of avx2/avx512/amx}"
"$bench_bin" encode "$ckpt" "$arch" fixtures/images | tee "$out/promptclip.jsonl"
"$bench_bin" sgemm | tee -a "$out/promptclip.jsonl"
PY="${PYTHON:-python3}"
case "$arch" in
RN*)
  check="$out/features-$arch"
  "$bench_bin" features "$ckpt" "$arch" "$check"
  if "$PY" -c "import torch, open_clip, safetensors" 2>/dev/null; then
    "$PY" bench/torch_encode.py "$arch" "$ckpt" "$check" | tee "$out/torch.jsonl"
    node bench/ratios.mjs "$out/promptclip.jsonl" "$out/torch.jsonl"
  else
    echo "torch + open_clip + safetensors not importable with $PY: promptclip numbers only"
  fi
  exit 0
  ;;
esac
if [ "$arch" = "ViT-B/16" ]; then
  "$bench_bin" coop-step "$ckpt" "$arch" | tee -a "$out/promptclip.jsonl"
  # CoCoOp, K = 50: each batch size in its own process, so peak memory is its own.
  for b in 1 8; do "$bench_bin" cocoop-step "$ckpt" "$b" | tee -a "$out/promptclip.jsonl"; done
fi
if "$PY" -c "import torch, transformers" 2>/dev/null; then
  "$PY" bench/torch_encode.py "$arch" fixtures/tiny-clip-hf fixtures/images | tee "$out/torch.jsonl"
  "$PY" bench/torch_sgemm.py | tee -a "$out/torch.jsonl"
  if [ "$arch" = "ViT-B/16" ]; then
    "$PY" bench/torch_coop_step.py fixtures/tiny-clip-hf | tee -a "$out/torch.jsonl"
    for b in 1 8; do "$PY" bench/torch_cocoop_step.py fixtures/tiny-clip-hf "$b" | tee -a "$out/torch.jsonl"; done
  fi
  node bench/ratios.mjs "$out/promptclip.jsonl" "$out/torch.jsonl"
  node bench/machine.mjs "$out/promptclip.jsonl" "$out/torch.jsonl"
else
  echo "torch + transformers not importable with $PY: promptclip numbers only"
  node bench/machine.mjs "$out/promptclip.jsonl"
fi
