#!/usr/bin/env bash
# The CUDA round trip, in one script.
#
#   bash scripts/gpu.sh build   here (no GPU needed): install CUDA 13.0 from PyPI into .gpu/,
#                               build the CUDA addon, the CUDA test binaries and the benchmark,
#                               and pack them with a node binary into .gpu/bundle (< 64 MiB)
#   bash scripts/gpu.sh run     on the GPU machine, from the repository root with .gpu/bundle
#                               carried: unpack, run the CUDA tests, then the benchmark beside
#                               the official PyTorch step; figures land in $OUT (or bench/results)
#
# Why PyPI: the GPU machine cannot build (no cargo, no node, no network) and this one has no CUDA.
# Every package is pinned to the 13.0 series: newer parts emit PTX that driver 580 (CUDA 13.0)
# refuses. The addon needs libcudart.so.13, libcublas(Lt).so.13, libcurand.so.10 and
# libnvrtc.so.13 at run time; the GPU machine's torch (cu130) ships them in nvidia/cu13/lib.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
gpu="$root/.gpu"
cuda_pkgs=(
  nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85
  nvidia-cuda-runtime==13.0.96 nvidia-cublas==13.0.2.14 nvidia-cuda-nvrtc==13.0.88 nvidia-curand==10.4.0.35
)

toolchain() {
  local site="$gpu/cuda-site"
  if [ ! -x "$site/nvidia/cu13/bin/nvcc" ]; then
    python3 -m pip install -q --disable-pip-version-check --target "$site" "${cuda_pkgs[@]}"
  fi
  export CUDA_ROOT="$site/nvidia/cu13" CUDA_PATH="$site/nvidia/cu13" CUDA_HOME="$site/nvidia/cu13"
  export PATH="$CUDA_ROOT/bin:$PATH" CUDA_COMPUTE_CAP=90 CUDARC_CUDA_VERSION=13000
  # Link-time libraries: unversioned names for the pip libraries, and a stub libcuda (the driver
  # is only on the GPU machine; at run time the real libcuda.so.1 is found by its soname).
  local link="$gpu/link"
  mkdir -p "$link"
  for f in "$CUDA_ROOT"/lib/lib*.so.*; do
    local base; base="$(basename "$f")"
    ln -sf "$f" "$link/${base%%.so.*}.so"
  done
  if [ ! -f "$link/libcuda.so" ]; then
    local drv; drv="$(ls -d "$HOME"/.cargo/registry/src/*/cudarc-0.19.*/src/driver/sys/mod.rs | head -n1)"
    grep -oE 'fn cu[A-Za-z0-9_]+\(' "$drv" | sort -u | sed -E 's/fn (cu[A-Za-z0-9_]+)\(/void \1(void) {}/' > "$link/cuda_stub.c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$link/libcuda.so" "$link/cuda_stub.c"
  fi
  export LIBRARY_PATH="$link${LIBRARY_PATH:+:$LIBRARY_PATH}"
  export RUSTFLAGS="-L $link"
  export LD_LIBRARY_PATH="$link${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}

build() {
  toolchain
  export CARGO_TARGET_DIR="$root/target/cuda"
  local host; host="$(rustc -vV | sed -n 's/^host: //p')"
  # The addon, exactly as users build it (napi build --features cuda), into .gpu/addon.
  mkdir -p "$gpu/addon"
  npx napi build --platform --release --features cuda --target "$host" --output-dir "$gpu/addon" --no-js --dts "$gpu/addon/index.d.ts"
  # The core's test binaries and the benchmark, with CUDA.
  cargo test --release -p promptclip-core --features cuda --target "$host" --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    try: m=json.loads(l)
    except Exception: continue
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["kind"]!=["bin"]:
        print(m["target"]["name"], m["executable"])' > "$gpu/tests.txt"
  cargo build --release -p promptclip-bench --features cuda --target "$host"
  bundle "$host"
}

bundle() {
  local host="$1" b="$gpu/bundle"
  rm -rf "$b" && mkdir -p "$b/bin" "$b/tests" "$b/pkg"
  # The test files that load models (the rest are CPU-only and stay here).
  while read -r name exe; do
    case "$name" in model | coop | cocoop | clip_adapter | tip_adapter | cuda | resnet | deep_prompts | vpt | ivlp | maple | promptsrc | clip_lora | official) cp "$exe" "$b/tests/$name" ;; esac
  done < "$gpu/tests.txt"
  cp "$CARGO_TARGET_DIR/$host/release/promptclip-bench" "$(command -v node)" "$b/bin/"
  # The package as users install it, with the CUDA build under the loader's own name.
  [ -f dist/index.js ] || npm run build:ts >/dev/null
  cp -r dist index.js package.json "$b/pkg/"
  cp "$gpu"/addon/promptclip.*.node "$b/pkg/"
  strip "$b"/bin/* "$b"/tests/* "$b"/pkg/*.node
  # The binaries share most of their bytes (candle's kernels): a dictionary larger than one of
  # them lets xz store those once (35 MB instead of 95).
  tar -C "$b" -cf - bin tests pkg | xz -T1 -6 --lzma2=preset=6,dict=256MiB > "$gpu/bundle.tar.xz"
  rm -rf "$b/bin" "$b/tests" "$b/pkg" && mv "$gpu/bundle.tar.xz" "$b/"
  du -sh "$b"
}

# On the GPU machine. Everything it needs came with the working tree: .gpu/bundle (carried),
# fixtures/, bench/. Results go to $OUT when the device tool runs it, else bench/results/gpu.
prepare() {
  out="${OUT:-$root/bench/results/gpu}" work=/tmp/promptclip-gpu
  mkdir -p "$out" "$work"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
  # The CUDA libraries the addon links: torch (cu130) ships them from PyPI.
  local libs
  libs="$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(os.path.dirname(torch.__file__)), "nvidia", "cu13", "lib"))')"
  export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  rm -rf "$work/b" && mkdir -p "$work/b" && tar -C "$work/b" -xJf "$gpu/bundle/bundle.tar.xz"
  local missing
  missing="$(ldd "$work/b/bin/promptclip-bench" | grep 'not found' || true)"
  [ -z "$missing" ] || { echo "missing libraries: $missing"; exit 1; }
}

# Where the GPU's time goes: one run of each workload under Nsight Compute, kernel by kernel.
profile() {
  prepare
  local ncu; ncu="$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu | head -n1)"
  for w in ${GPU_PROFILE:-image coop cocoop}; do
    "$ncu" --profile-from-start off --clock-control none --metrics gpu__time_duration.sum --csv --page raw \
      "$work/b/bin/promptclip-bench" profile "$work" "$w" > "$out/ncu-$w.csv" 2> "$out/ncu-$w.log" || { tail "$out/ncu-$w.log"; continue; }
    grep wall "$out/ncu-$w.log"
    python3 bench/ncu_summary.py "$out/ncu-$w.csv" | tee "$out/ncu-$w.txt"
  done
}

run() {
  prepare
  local status=0
  if [ "${GPU_SKIP_TESTS:-}" != 1 ]; then
    # The fixture tests of the core, on CUDA (PROMPTCLIP_TEST_DEVICE), then the CUDA-only tests.
    for t in "$work"/b/tests/*; do
      echo "== test $(basename "$t")"
      local log="$work/$(basename "$t").log" rc=0
      PROMPTCLIP_TEST_DEVICE=cuda PROMPTCLIP_FIXTURES="$root/fixtures" "$t" --test-threads=1 --nocapture ${GPU_TEST_FILTER:-} >"$log" 2>&1 || rc=$?
      cat "$log" >> "$out/tests.log"
      grep -E '^(test |test result|---- )|panicked|rel err|loss|cpu vs cuda' "$log" || true
      [ "$rc" = 0 ] || status=1
    done
  fi
  if [ "${GPU_SKIP_TESTS:-}" != 1 ]; then
    "$work/b/bin/node" scripts/gpu-node-check.cjs "$work/b/pkg" "$root/fixtures" 2>&1 | tee -a "$out/tests.log" || status=1
  fi
  if [ "${GPU_SKIP_BENCH:-}" != 1 ]; then
    "$work/b/bin/promptclip-bench" gpu "$work" cuda:0 | tee "$out/promptclip.jsonl"
    python3 bench/torch_official_gpu.py "$work" | tee "$out/official.jsonl"
    # The whole 200-epoch job with its JPEG pipeline; the official pipeline for a few epochs.
    "$work/b/bin/promptclip-bench" e2e "$work" cuda:0 "${GPU_E2E_EPOCHS:-200}" | tee -a "$out/promptclip.jsonl"
    python3 bench/torch_official_e2e.py "$work" 4 | tee -a "$out/official.jsonl"
    python3 bench/gpu_report.py "$out/promptclip.jsonl" "$out/official.jsonl" | tee "$out/report.txt"
  fi
  return $status
}

# Type-check the CUDA code paths here (seconds, not the full build).
check() {
  toolchain
  CARGO_TARGET_DIR="$root/target/cuda" cargo check --release --features cuda -p promptclip-core -p promptclip-bench --tests --target "$(rustc -vV | sed -n 's/^host: //p')"
}

case "${1:-}" in
  build) build ;;
  check) check ;;
  run) run ;;
  profile) profile ;;
  *) echo "usage: bash scripts/gpu.sh build|check|run|profile" >&2; exit 2 ;;
esac
