#!/usr/bin/env bash
# The long fuzz runs of the whole project: the TypeScript property tests (split files, CSV, IDX)
# with NUM_RUNS cases each (the suite runs 150) and a fresh seed, then the core's property tests
# with PROPTEST_CASES cases. Usage: scripts/fuzz.sh [NUM_RUNS] [PROPTEST_CASES]
# (defaults 20000 and 20000). Needs a built package (npm run build).
set -euo pipefail
cd "$(dirname "$0")/.."
export NUM_RUNS="${1:-${NUM_RUNS:-20000}}"
export PROPTEST_CASES="${2:-${PROPTEST_CASES:-20000}}"
# A fresh seed each run (printed, so that a failure can be replayed with FUZZ_SEED=...).
export FUZZ_SEED="${FUZZ_SEED:-$RANDOM$RANDOM}"
echo "fuzz: NUM_RUNS=$NUM_RUNS FUZZ_SEED=$FUZZ_SEED PROPTEST_CASES=$PROPTEST_CASES"

npx ava --timeout=60m __test__/datasets-robust.spec.ts

host="$(rustc -vV | sed -n 's/^host: //p')"
# The core's property tests: the image reader and preprocessor config (image_fuzz), and the
# readers of safetensors, config, tokenizer, learner and checkpoint files (fuzz_readers); run
# those that exist, and say which are missing rather than fail on them.
tests=()
for t in image_fuzz fuzz_readers; do
  if [ -f "crates/promptclip-core/tests/$t.rs" ]; then tests+=(--test "$t"); else echo "fuzz: crates/promptclip-core/tests/$t.rs not found, skipped"; fi
done
if [ "${#tests[@]}" -gt 0 ]; then
  # --nocapture: each property prints its cases run and outcomes by code (the figures to report).
  cargo test --release -p promptclip-core --target "$host" "${tests[@]}" -- --nocapture --test-threads 1
fi
