#!/usr/bin/env bash
# One-time (idempotent) set-up of a fresh Debian 12 machine for qtrain:
#   1. Debian packages for the C++ dependencies,
#   2. a Python venv OUTSIDE the checkout with torch (libtorch) and the test oracles, keyed by the
#      hash of scripts/requirements.txt so every clone with the same pins reuses it,
#   3. configure + build (ninja, ccache, precompiled headers).
# Usage: scripts/setup.sh [--no-build]      Environment: QTRAIN_CACHE (default ~/.cache/qtrain),
#        QTRAIN_BUILD_DIR (default build), QTRAIN_CUDA (AUTO|ON|OFF), QTRAIN_JOBS.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
. scripts/env.sh

build=1
for a in "$@"; do
  case "$a" in
    --no-build) build=0 ;;
    *) echo "setup.sh: unknown argument '$a' (expected --no-build)" >&2; exit 2 ;;
  esac
done

step() { printf '[setup] %-34s' "$1"; t0=$(date +%s); }
done_() { printf ' %s (%ds)\n' "$1" $(( $(date +%s) - t0 )); }

# 1. Debian packages ----------------------------------------------------------------------------
debs=(build-essential cmake ninja-build ccache pkg-config python3-venv
      libboost-program-options-dev libhdf5-dev libgtest-dev libgmock-dev libyaml-cpp-dev
      nlohmann-json3-dev libsentencepiece-dev libpcre2-dev
      libcurl4-openssl-dev   # Hub downloads (data/hub): libcurl over HTTPS
      libssl-dev             # OpenSSL's libcrypto headers for the sha256 checks (libcurl4-openssl-dev only Suggests it)
      ca-certificates        # the CA bundle libcurl verifies huggingface.co with (libcurl4 only Recommends it)
      libgloo-dev   # headers for c10d's ProcessGroupGloo (multi-process training on the CPU); the code is in libtorch
      clang libclang-rt-14-dev llvm)   # clang + libFuzzer/ASan runtimes + llvm-symbolizer: scripts/fuzz.sh
step "Debian packages"
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo_=""; [ "$(id -u)" -ne 0 ] && sudo_="sudo"
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq "${missing[@]}" >/dev/null
  done_ "installed: ${missing[*]}"
else
  done_ "already present"
fi

# 2. Python venv (outside the checkout) --------------------------------------------------------
step "Python venv"
if [ -x "$QTRAIN_VENV/bin/python" ] && [ -f "$QTRAIN_VENV/.complete" ]; then
  done_ "reused $QTRAIN_VENV"
else
  rm -rf "$QTRAIN_VENV"
  mkdir -p "$(dirname "$QTRAIN_VENV")"
  python3 -m venv "$QTRAIN_VENV"
  "$QTRAIN_VENV/bin/pip" install -q --upgrade pip
  "$QTRAIN_VENV/bin/pip" install -q -r scripts/requirements.txt
  touch "$QTRAIN_VENV/.complete"
  done_ "created $QTRAIN_VENV"
fi

# 3. Configure and build -----------------------------------------------------------------------
if [ "$build" = 1 ]; then
  step "configure ($QTRAIN_BUILD_DIR)"
  mkdir -p "$QTRAIN_BUILD_DIR"
  torch_prefix=$("$QTRAIN_VENV/bin/python" -c 'import torch; print(torch.utils.cmake_prefix_path)')
  cmake -S . -B "$QTRAIN_BUILD_DIR" -G Ninja \
    -DCMAKE_PREFIX_PATH="$torch_prefix" \
    -DQTRAIN_CUDA="${QTRAIN_CUDA:-AUTO}" \
    -DQTRAIN_PYTHON="$QTRAIN_VENV/bin/python" \
    -DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache \
    > "$QTRAIN_BUILD_DIR/setup-configure.log" 2>&1 || { cat "$QTRAIN_BUILD_DIR/setup-configure.log"; exit 1; }
  done_ "$(grep -o 'CUDA kernels [A-Z]*' "$QTRAIN_BUILD_DIR/setup-configure.log" | head -1)"
  step "build"
  cmake --build "$QTRAIN_BUILD_DIR" -j "${QTRAIN_JOBS:-$(nproc)}" > "$QTRAIN_BUILD_DIR/setup-build.log" 2>&1 \
    || { tail -n 60 "$QTRAIN_BUILD_DIR/setup-build.log"; exit 1; }
  done_ "ok ($(ccache -s 2>/dev/null | grep -i 'hits' | head -1 | tr -s ' ' || true))"
fi
