# Sourced by the scripts: where the venv and the build live. No side effects beyond exports.
QTRAIN_CACHE=${QTRAIN_CACHE:-$HOME/.cache/qtrain}
_qtrain_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_qtrain_req_hash=$( (cat "$_qtrain_root/scripts/requirements.txt"; python3 --version 2>&1) | sha256sum | cut -c1-12)
export QTRAIN_VENV=${QTRAIN_VENV:-$QTRAIN_CACHE/venv-$_qtrain_req_hash}
export QTRAIN_BUILD_DIR=${QTRAIN_BUILD_DIR:-$_qtrain_root/build}
# ccache across clones: one cache outside the checkout; PCH needs these sloppiness flags to hit.
export CCACHE_DIR=${CCACHE_DIR:-$QTRAIN_CACHE/ccache}
export CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
export CCACHE_BASEDIR=$_qtrain_root
export CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-5G}
