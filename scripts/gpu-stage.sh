#!/usr/bin/env bash
# Stages this checkout for scripts/gpu-check.sh on the GPU machine (../shared/tools/gpu/README.md)
# and checks that what travels fits the device tool's 64 MiB (working tree + .gpu).
#   bash scripts/gpu-stage.sh          then: device run, carry [".gpu"]: bash .gpu/remote.sh bash scripts/gpu-check.sh
#   bash ../shared/tools/gpu/restore.sh   (always, before committing)
# .gpu (node and node_modules, xz) is about 41 MB, the tree without big fixtures about 6 MB: the
# dumps kept for parity must stay under about 19 MB. adm64.safetensors (31 MB) cannot travel; the
# attention-head and DifFormer dumps are then compared from their stored features (feat.*), and
# adm32-mini checks every U-Net kernel. KEEP="…" replaces this choice.
set -euo pipefail
cd "$(dirname "$0")/.."
keep=${KEEP:-test/fixtures/adm32-mini.safetensors test/fixtures/attention-head.safetensors test/fixtures/difformer.safetensors}
# stage.sh ends early, before its own size line, once a file it moved aside is listed by git (du
# fails under set -e): its exit status says nothing about the size, which is measured here.
KEEP="$keep" bash ../shared/tools/gpu/stage.sh || true
[[ -f .gpu/remote.sh && -f .gpu/node.xz && -f .gpu/node_modules.tar.xz ]] || { echo "[gpu-stage] stage.sh did not write .gpu"; exit 1; }
tree=0
while IFS= read -r -d '' f; do
  [[ -f $f ]] && tree=$((tree + $(stat -c %s "$f")))
done < <(git ls-files -z --cached --others --exclude-standard)
gpu=$(du -sb .gpu | cut -f1)
limit=$((64 * 1048576))
echo "[gpu-stage] travelling: $(((tree + gpu) / 1048576)) MiB of 64 (tree $((tree / 1048576)), .gpu $((gpu / 1048576))); kept: $keep"
if ((tree + gpu >= limit)); then
  echo "[gpu-stage] over the device tool's 64 MiB: keep fewer dumps (KEEP=\"…\"), then run this again"
  bash ../shared/tools/gpu/restore.sh
  exit 1
fi
