#!/usr/bin/env bash
# Stages this checkout for scripts/gpu-check.sh on the GPU machine (../shared/tools/gpu/README.md)
# and checks that what travels fits the device tool's 64 MiB (working tree + .gpu).
#   bash scripts/gpu-stage.sh          then: device run, carry [".gpu"]: bash .gpu/remote.sh bash scripts/gpu-check.sh
#   bash ../shared/tools/gpu/restore.sh   (always, before committing)
# .gpu (node and node_modules, xz) is about 41 MB, the tree without big fixtures about 6 MB: the
# dumps kept for parity must stay under about 19 MB. adm64.safetensors (31 MB) cannot travel; the
# attention-head and DifFormer dumps are then compared from their stored features (feat.*), and
# adm32-mini checks every U-Net kernel. KEEP="…" replaces this choice. On any failure the files
# stage.sh moved aside are put back.
set -euo pipefail
cd "$(dirname "$0")/.."
keep=${KEEP:-test/fixtures/adm32-mini.safetensors test/fixtures/attention-head.safetensors test/fixtures/difformer.safetensors}
fail() {
  echo "[gpu-stage] $*"
  bash ../shared/tools/gpu/restore.sh
  exit 1
}
trap 'fail "interrupted"' INT TERM
for f in $keep; do [[ -f $f ]] || fail "KEEP names $f, which is not here"; done
log=$(mktemp)
status=0
KEEP="$keep" bash ../shared/tools/gpu/stage.sh 2>&1 | tee "$log" || status=$?
# stage.sh ends early, right after moving files aside, once git lists a file it moved (its du fails
# under set -e, before its own size line): that exit is expected; any earlier one is a failure.
if ((status != 0)) && ! grep -q 'moved [0-9]* big tracked files' "$log"; then fail "stage.sh failed (exit $status)"; fi
rm -f "$log"
[[ -f .gpu/remote.sh ]] || fail "stage.sh wrote no .gpu/remote.sh"
xz -t .gpu/node.xz .gpu/node_modules.tar.xz || fail ".gpu's archives are damaged: delete .gpu and run this again"
tree=0
while IFS= read -r -d '' f; do
  [[ -f $f ]] && tree=$((tree + $(stat -c %s "$f")))
done < <(git ls-files -z --cached --others --exclude-standard)
gpu=$(du -sb .gpu | cut -f1)
echo "[gpu-stage] travelling: $(((tree + gpu) / 1048576)) MiB of 64 (tree $((tree / 1048576)), .gpu $((gpu / 1048576))); kept: $keep"
((tree + gpu < 64 * 1048576)) || fail "over the device tool's 64 MiB: keep fewer dumps (KEEP=\"…\"), then run this again"
trap - INT TERM
