#!/usr/bin/env bash
# One-time, idempotent setup for a fresh Debian 12 machine:
#   1. a WebGPU-capable Vulkan driver (Mesa >= 25 lavapipe from bookworm-backports; Debian 12's own
#      Mesa 22 is rejected by Dawn),
#   2. Fashion-MNIST (dataset-fashion-mnist) and a font for the charts (fonts-dejavu-core),
#   3. the npm dependencies,
#   4. a probe that prints the WebGPU adapter found (vendor, architecture, features, limits),
#   5. with --browser: Debian's chromium, for the browser tests, `parity --runtime chromium` and the
#      example page's test (headless Chromium runs WebGPU on its own SwiftShader adapter).
# Safe to run again: every step checks before it changes anything.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[setup] %s\n' "$*"; }

# The installed Mesa's version: only a package in state "ii" (one removed but not purged still has a
# version) and only this machine's architecture (two would run their versions together).
mesa_version() {
  local arch
  arch=$(dpkg --print-architecture 2>/dev/null || true)
  dpkg-query -W -f='${db:Status-Abbrev}${Version}' "mesa-vulkan-drivers${arch:+:$arch}" 2>/dev/null | sed -nE 's/^ii +//p'
}

mesa_major() {
  mesa_version | sed -E 's/^([0-9]+:)?([0-9]+).*/\2/'
}

install_lavapipe() {
  local major
  major=$(mesa_major || true)
  if [[ -n "$major" && "$major" -ge 25 ]]; then
    say "lavapipe already installed: mesa-vulkan-drivers $(mesa_version)"
    return 0
  fi
  if ! command -v apt-get >/dev/null; then
    say "no apt-get here: install a Vulkan driver with WebGPU support (Mesa >= 25 lavapipe, or a GPU driver) yourself"
    return 0
  fi
  local sudo=""
  if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null; then sudo="sudo"; else
      say "not root and no sudo: cannot install mesa-vulkan-drivers; run this script as root"; return 1
    fi
  fi
  local codename
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  if [[ "$codename" == "bookworm" ]]; then
    if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
      say "adding the bookworm-backports suite"
      echo "deb http://deb.debian.org/debian bookworm-backports main" | $sudo tee /etc/apt/sources.list.d/difrep-backports.list >/dev/null
    fi
    say "apt-get update"
    $sudo apt-get update -qq
    # Backports has a low pin priority: without -t a plain install silently picks Mesa 22.
    say "installing mesa-vulkan-drivers from bookworm-backports"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports mesa-vulkan-drivers libvulkan1 >/dev/null
  else
    say "apt-get update"
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
  fi
  major=$(mesa_major || true)
  if [[ -z "$major" || "$major" -lt 25 ]]; then
    say "ERROR: mesa-vulkan-drivers is ${major:-missing} after install; Dawn needs Mesa >= 25"
    return 1
  fi
  say "installed mesa-vulkan-drivers $(mesa_version)"
}

# apt-get install PACKAGE from the configured suites, refreshing the package lists once if needed.
# (sudo resets the environment: DEBIAN_FRONTEND goes through env.)
apt_install() {
  local sudo=""
  if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null; then sudo="sudo"; else
      say "not root and no sudo: cannot install $1; run this script as root, or install it yourself"; return 1
    fi
  fi
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null \
    || { $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null; }
}

# Node.js >= 20 (package.json's engines; tap 21 needs it): Debian 12's own nodejs is 18.
check_node() {
  local major
  major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || true)
  if [[ -z "$major" ]] || ! command -v npm >/dev/null; then
    say "ERROR: Node.js >= 20 with npm is needed and none was found: install it (nodejs.org, or NodeSource's Debian packages), then run this again"
    return 1
  fi
  if [[ "$major" -lt 20 ]]; then
    say "ERROR: Node.js $(node --version) found; difrep needs >= 20 (Debian 12's nodejs is 18): install a newer one (nodejs.org, or NodeSource's Debian packages)"
    return 1
  fi
}

# ensure_package PACKAGE WHAT CHECK...: apt-get install PACKAGE unless the command CHECK... succeeds.
ensure_package() {
  local package=$1 what=$2
  shift 2
  if "$@" >/dev/null 2>&1; then
    say "$what present"
    return 0
  fi
  if ! command -v apt-get >/dev/null; then
    say "no apt-get: install $package yourself ($what); what needs it will say so"
    return 0
  fi
  say "installing $package ($what)"
  apt_install "$package"
}

install_npm_deps() {
  if [[ -d node_modules/webgpu && -d node_modules/tap && node_modules -nt package-lock.json ]]; then
    say "npm dependencies present"
  else
    say "npm ci"
    npm ci --no-audit --no-fund --loglevel=error
  fi
}

browser=0
for arg in "$@"; do
  case "$arg" in
    --browser) browser=1 ;;
    *) say "unknown option $arg (known: --browser)"; exit 2 ;;
  esac
done

check_node
install_lavapipe
# Fashion-MNIST (~30 MB) for the experiments CLI and its tests; a font for the charts' text (SVG
# rendered to PNG with the system's fonts); with --browser, chromium (or set DIFREP_CHROMIUM).
ensure_package dataset-fashion-mnist "Fashion-MNIST" test -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
ensure_package fonts-dejavu-core "DejaVu fonts" test -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
# Where the browser tests and the CLI look for it (src/cli/chromium.ts), not anywhere on PATH.
has_chromium() { [[ -n "${DIFREP_CHROMIUM:-}" && -x "${DIFREP_CHROMIUM}" ]] || [[ -x /usr/bin/chromium || -x /usr/bin/chromium-browser ]]; }
[[ $browser -eq 1 ]] && ensure_package chromium "chromium (browser tests)" has_chromium
install_npm_deps
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
npx --no-install tsx scripts/probe-adapter.ts
