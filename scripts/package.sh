#!/usr/bin/env bash
# The prebuilt packages: one npm package per platform addon (npm/<platform>/), the main package
# naming them as optional dependencies.
#
#   bash scripts/package.sh pack [dest]  after `npm run build`: pack promptclip and every platform
#                                        package whose addon is built into dest (default .pack/),
#                                        checking the size budget (scripts/pack.cjs)
#   bash scripts/package.sh cuda         put the CUDA addon that `bash scripts/gpu.sh build` made
#                                        (.gpu/addon/) into npm/linux-x64-gnu-cuda/
#   bash scripts/package.sh arm64        cross-build the linux arm64 addon with zig into
#                                        npm/linux-arm64-gnu/ (needs the rustup target
#                                        aarch64-unknown-linux-gnu; installs zig and
#                                        cargo-zigbuild from PyPI into .zig-venv/)
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"

pack() {
  node scripts/pack.cjs "${1:-$root/.pack}"
}

cuda() {
  local src="$root/.gpu/addon/promptclip.linux-x64-gnu.node"
  local dst="$root/npm/linux-x64-gnu-cuda/promptclip.linux-x64-gnu-cuda.node"
  [ -f "$src" ] || { echo "no $src: run \`bash scripts/gpu.sh build\` first" >&2; exit 1; }
  grep -q libcudart "$src" || { echo "$src links no CUDA library: not a CUDA build" >&2; exit 1; }
  cp "$src" "$dst"
  strip "$dst"
  ls -l "$dst"
}

arm64() {
  local venv="$root/.zig-venv" target=aarch64-unknown-linux-gnu
  rustup target list --installed | grep -qx "$target" || rustup target add "$target"
  if [ ! -x "$venv/bin/cargo-zigbuild" ]; then
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check ziglang cargo-zigbuild
  fi
  # napi -x runs cargo-zigbuild, which runs `zig`: the venv's, through a shim.
  printf '#!/bin/sh\nexec "%s" -m ziglang "$@"\n' "$venv/bin/python" > "$venv/bin/zig"
  chmod +x "$venv/bin/zig"
  mkdir -p "$root/.pack"
  PATH="$venv/bin:$PATH" npx napi build --platform --release -x --target "$target" \
    --output-dir npm/linux-arm64-gnu --no-js --dts ../../.pack/arm64.d.ts  # relative to --output-dir
  ls -l npm/linux-arm64-gnu/promptclip.linux-arm64-gnu.node
}

case "${1:-}" in
  pack) pack "${2:-}" ;;
  cuda) cuda ;;
  arm64) arm64 ;;
  *) echo "usage: bash scripts/package.sh pack [dest]|cuda|arm64" >&2; exit 2 ;;
esac
