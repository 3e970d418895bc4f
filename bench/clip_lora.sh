#!/usr/bin/env bash
# One CLIP-LoRA training step (ViT-B/16 shapes with random weights, K = 100, rank 2 on q, k, v of
# every block of both towers, AdamW), promptclip (bench/src/clip_lora.rs) against the OFFICIAL
# code's step (bench/torch_clip_lora.py) on the same checkpoint, on this machine's CPU: step time,
# images per second and peak memory, each configuration in its own process; then image encoding
# of 32 images by the frozen model and by the LoRA-merged one, in each implementation (merged
# prediction should cost what the frozen model's does). Prints the ratios (> 1: promptclip
# faster, or using less memory).
#
# The torch side needs a checkout of MaxZanella/CLIP-LoRA (not part of this project) in
# CLIP_LORA_OFFICIAL; without it only promptclip runs. Its code without the images is enough:
#   git clone https://github.com/MaxZanella/CLIP-LoRA /tmp/CLIP-LoRA   (or an existing clone)
#   mkdir -p /tmp/clip-lora-official && git -C /tmp/CLIP-LoRA archive HEAD -- clip loralib \
#     lora.py utils.py | tar -x -C /tmp/clip-lora-official
#   export CLIP_LORA_OFFICIAL=/tmp/clip-lora-official
# PYTHON=/path/to/python with torch, safetensors, ftfy and regex (default python3).
# PROMPTCLIP_MEMORY_BUDGET_MB sets promptclip's memory budget (default 2048): the image tower's
# tape runs in chunks of images that fit it.
#   bash bench/clip_lora.sh [batch sizes, default "32"]
set -euo pipefail
cd "$(dirname "$0")/.."
out="bench/results"; mkdir -p "$out"
ckpt="${TMPDIR:-/tmp}/promptclip-bench-ViT-B-16.safetensors"
host="$(rustc -vV | sed -n 's/^host: //p')"
py="${PYTHON:-python3}"
echo "CPU: $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), $(nproc) cores"
cargo build --release -q -p promptclip-bench --target "$host"
bench_bin="${CARGO_TARGET_DIR:-./target}/$host/release/promptclip-bench"
torch=1
if [ -z "${CLIP_LORA_OFFICIAL:-}" ]; then
  torch=0
  echo "CLIP_LORA_OFFICIAL is not set: skipping the official (torch) side; see the top of $0 for how to make a checkout"
fi
: > "$out/clip-lora-promptclip.jsonl"; : > "$out/clip-lora-torch.jsonl"
# Other work on the machine skews every figure: the load average before each run says how much.
load() { echo "load average before $1: $(cut -d' ' -f1-3 /proc/loadavg)" >&2; }
# The official side may run out of memory (its step keeps every activation): say so, go on.
official() {
  local rc=0
  "$py" bench/torch_clip_lora.py "$@" --official "$CLIP_LORA_OFFICIAL" || rc=$?
  [ "$rc" = 0 ] || echo "the official side failed (exit $rc): torch_clip_lora.py $*" >&2
}
for b in ${1:-32}; do
  load "promptclip clip-lora b$b"
  "$bench_bin" clip-lora "$ckpt" "$b" | tee -a "$out/clip-lora-promptclip.jsonl"
  if [ "$torch" = 1 ]; then
    load "torch clip-lora b$b"
    official "$ckpt" "$b" | tee -a "$out/clip-lora-torch.jsonl"
  fi
done
load "promptclip clip-lora-predict"
"$bench_bin" clip-lora-predict "$ckpt" 32 | tee "$out/clip-lora-predict-promptclip.jsonl"
: > "$out/clip-lora-predict-torch.jsonl"
if [ "$torch" = 1 ]; then
  load "torch --predict"
  official "$ckpt" 32 --predict | tee "$out/clip-lora-predict-torch.jsonl"
  if [ -s "$out/clip-lora-torch.jsonl" ]; then
    echo "== training step, promptclip vs the official code"
    node bench/ratios.mjs "$out/clip-lora-promptclip.jsonl" "$out/clip-lora-torch.jsonl"
  fi
  if [ -s "$out/clip-lora-predict-torch.jsonl" ]; then
    echo "== image encoding, promptclip vs torch (frozen vs frozen, merged vs merged)"
    node bench/ratios.mjs "$out/clip-lora-predict-promptclip.jsonl" "$out/clip-lora-predict-torch.jsonl"
  fi
fi
echo "== merged LoRA vs frozen image encoding, within each implementation (ratio: merged seconds / frozen seconds; 1 = the same speed)"
node -e '
const fs = require("node:fs")
for (const f of process.argv.slice(1)) {
  const rows = fs.readFileSync(f, "utf8").trim().split("\n").filter(Boolean).map((l) => JSON.parse(l))
  const frozen = rows.find((r) => r.what.startsWith("frozen_encode"))
  const merged = rows.find((r) => r.what.startsWith("lora_merged_encode"))
  if (!frozen || !merged) continue
  const fmt = (v) => v.map((s) => s.toFixed(3)).join(" ")
  console.log(`${merged.impl}: frozen ${frozen.seconds.toFixed(3)} s [${fmt(frozen.all_seconds)}], merged ${merged.seconds.toFixed(3)} s [${fmt(merged.all_seconds)}], ratio ${(merged.seconds / frozen.seconds).toFixed(3)}; merge took ${merged.merge_seconds.toFixed(3)} s`)
}' "$out/clip-lora-predict-promptclip.jsonl" "$out/clip-lora-predict-torch.jsonl"
