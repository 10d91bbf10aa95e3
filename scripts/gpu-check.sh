#!/usr/bin/env bash
# Issue 13's check on the GPU machine, as one prepared script (../shared/tools/gpu/README.md):
#   bash scripts/gpu-stage.sh          (stage.sh with the dumps that fit the tool's 64 MiB, size checked)
#   device run, carry [".gpu"], timeout_s 560:  bash .gpu/remote.sh bash scripts/gpu-check.sh
#   bash ../shared/tools/gpu/restore.sh        (always, before committing)
# Writes under $OUT: parity.txt (the PyTorch dumps kept in test/fixtures, run with the kernels the
# adapter gets by default), RESULTS-h200.md and bench.json (npm run bench with PyTorch beside it:
# every kernel row, ADM-256 to b24 at batch 1/8/32, its full forward at batch 8, the reference
# U-Net's training step at batch 16/64). Each stage is time-boxed so the whole fits 9 minutes; the
# bench prints each row as it finishes, so a cut-short run still leaves its rows in remote.log.
# BENCH_ARGS replaces the bench's arguments (BENCH_ARGS="--quick --no-peer" tries this on lavapipe).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu-check}
mkdir -p "$out"
status=0

dumps=()
for name in adm32-mini adm64 attention-head difformer difeed; do
  [[ -f test/fixtures/$name.safetensors ]] && dumps+=("test/fixtures/$name.safetensors")
done
if [[ ${#dumps[@]} -gt 0 ]]; then
  unet=()
  [[ -f test/fixtures/adm64.safetensors ]] && unet=(--unet test/fixtures/adm64.safetensors)
  echo "== parity: ${dumps[*]}"
  timeout 150 npm run -s parity -- "${dumps[@]}" "${unet[@]}" > "$out/parity.txt" 2>&1 || status=1
  grep -E 'adapter|PASS|FAIL' "$out/parity.txt"
else
  echo "== parity skipped: no dump in test/fixtures (stage with KEEP=\"test/fixtures/adm64.safetensors …\")"
fi

echo "== bench"
# shellcheck disable=SC2086 # BENCH_ARGS is a list of arguments
timeout 380 npm run -s bench -- ${BENCH_ARGS:---peer torch} --md "$out/RESULTS-h200.md" --json "$out/bench.json" || status=1
exit $status
