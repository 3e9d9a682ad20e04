#!/usr/bin/env bash
# Prepare .deps/gpu-sysroot: the Debian build dependencies that a bare GPU machine (CUDA image with
# nvcc, CMake, ninja and PyTorch, but none of our Debian packages and no network) lacks, as a
# relocatable folder small enough to travel with the working tree (device tool: carry
# [".deps/gpu-sysroot"]). scripts/gpu-check.sh builds against it there.
#
# Run HERE (Debian 12, network to the Debian mirror), before a device call:   scripts/gpu-deps.sh
# Nothing is installed system-wide: the .deb files are fetched with `apt-get download` into
# .deps/debs (a cache) and unpacked with `dpkg -x` into .deps/gpu-sysroot, which is rebuilt from
# scratch on every run. Then:
#   - runtime libraries the unpacked ones need (readelf NEEDED, recursively) are added, except glibc,
#     libstdc++ and libgcc_s, which must be the target's own; gpu-check.sh uses the carried copy of
#     such a transitive library only where the target lacks it;
#   - the Boost header tree is pruned to the headers our sources include, transitively (g++ -M);
#   - docs, man pages, unused static libraries and executables are dropped;
#   - pkg-config files are made relocatable (prefix=${pcfiledir}/...);
#   - absolute symlinks are made relative, dangling ones removed.
# Ends with the folder's size, and fails if it is 50 MiB or more.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

SYSROOT=$root/.deps/gpu-sysroot
DEBS=$root/.deps/debs
ARCH_TRIPLET=x86_64-linux-gnu
LIMIT_MIB=50

# Development packages (headers, .so links, CMake/pkg-config files) and their runtime libraries.
PKGS=(
  libboost1.74-dev libboost-program-options1.74-dev libboost-program-options1.74.0
  libhdf5-dev libhdf5-103-1
  libgtest-dev libgmock-dev
  libyaml-cpp-dev libyaml-cpp0.7
  nlohmann-json3-dev
  libsentencepiece-dev libsentencepiece0
  libpcre2-dev libpcre2-8-0
  pkgconf-bin libpkgconf3          # pkg-config for targets without one
)
# Never carried: the target's own C library, C++ runtime and compiler runtime must be used.
EXCLUDE_PKGS=" libc6 libstdc++6 libgcc-s1 "

log() { printf '[gpu-deps] %s\n' "$*"; }
t0=$(date +%s)
mkdir -p "$DEBS"

fetch() {  # fetch PKG...: download the candidate .deb of each package into $DEBS unless cached
  local need=() p v f
  for p in "$@"; do
    v=$(apt-cache policy "$p" | awk '/Candidate:/ {print $2}')
    [ -n "$v" ] && [ "$v" != "(none)" ] || { echo "gpu-deps: no candidate for package $p" >&2; exit 1; }
    f="${p}_${v//:/%3a}_"
    ls "$DEBS/$f"*.deb >/dev/null 2>&1 || need+=("$p")
  done
  if [ ${#need[@]} -gt 0 ]; then
    log "apt-get download ${need[*]}"
    (cd "$DEBS" && apt-get -q -o APT::Sandbox::User="$(id -un)" download "${need[@]}" >/dev/null)
  fi
}

unpack() {  # unpack PKG...: dpkg -x the cached .deb of each package into the sysroot
  local p v
  for p in "$@"; do
    v=$(apt-cache policy "$p" | awk '/Candidate:/ {print $2}')
    dpkg -x "$(ls "$DEBS/${p}_${v//:/%3a}_"*.deb | head -1)" "$SYSROOT"
    echo "$p $v" >> "$SYSROOT/PACKAGES.txt"
  done
  # Merge /lib into /usr/lib (some packages still ship there), so one library folder serves all.
  if [ -d "$SYSROOT/lib" ]; then
    mkdir -p "$SYSROOT/usr/lib"; cp -a "$SYSROOT/lib/." "$SYSROOT/usr/lib/"; rm -rf "${SYSROOT:?}/lib"
  fi
}

# 1. Fetch and unpack ---------------------------------------------------------------------------
rm -rf "$SYSROOT"
mkdir -p "$SYSROOT"
: > "$SYSROOT/PACKAGES.txt"
fetch "${PKGS[@]}"
unpack "${PKGS[@]}"
have=" ${PKGS[*]} "

# 2. Runtime closure: NEEDED sonames not provided inside the sysroot -------------------------------
elf_files() { find "$SYSROOT" -type f \( -name '*.so*' -o -path '*/bin/*' \) -exec sh -c \
  'for f; do head -c4 "$f" | grep -q ELF && echo "$f"; done' sh {} +; }
while :; do
  new=()
  for soname in $(elf_files | xargs -r readelf -d 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | sort -u); do
    [ -n "$(find "$SYSROOT/usr/lib" -name "$soname" -print -quit)" ] && continue
    path=$(ldconfig -p | awk -v s="$soname" '$1 == s && /x86-64/ {print $NF; exit}')
    [ -n "$path" ] || { echo "gpu-deps: $soname is needed but not installed here; cannot find its package" >&2; exit 1; }
    pkg=""
    for cand in "$path" "$(readlink -f "$path")" "/usr${path#/usr}" "${path#/usr}"; do
      pkg=$(dpkg -S "$cand" 2>/dev/null | head -1 | cut -d: -f1) && [ -n "$pkg" ] && break
    done
    [ -n "$pkg" ] || { echo "gpu-deps: no package owns $path ($soname)" >&2; exit 1; }
    case "$EXCLUDE_PKGS$have" in *" $pkg "*) continue ;; esac
    new+=("$pkg"); have+="$pkg "
  done
  [ ${#new[@]} -eq 0 ] && break
  log "runtime dependencies: ${new[*]}"
  fetch "${new[@]}"
  unpack "${new[@]}"
done

# 3. Prune Boost to the headers our sources include (transitively) -----------------------------
# g++ -M with the sysroot's include dir ahead of /usr/include resolves boost/* inside the sysroot;
# -MG lets missing headers (torch, generated) through without following them. Run with and without
# the CUDA define so either configuration's include set is kept.
inc=$SYSROOT/usr/include
srcs=$(git ls-files -co --exclude-standard -- '*.cpp' '*.cc' '*.h' '*.hpp' '*.cu' '*.cuh' | xargs -r grep -l '#include' || true)
keep=$(mktemp)
for f in $srcs; do
  for defs in "" "-DQTRAIN_WITH_CUDA=1"; do
    g++ -std=c++20 -x c++ -M -MG $defs -I"$root" -isystem "$inc" "$f" 2>/dev/null || true
  done
done | tr ' \\' '\n\n' | grep "^$inc/boost/" | sort -u | xargs -r realpath -ms --relative-to="$inc" \
  | grep '^boost/' > "$keep"
# Boost's configuration headers are selected per compiler and standard library: keep all of them
# (small) so a different host compiler on the target still finds its own.
(cd "$inc" && find boost/config -type f; echo boost/version.hpp) >> "$keep"
sort -u -o "$keep" "$keep"
nboost=$(wc -l < "$keep")
[ "$nboost" -gt 10 ] || { echo "gpu-deps: found only $nboost Boost headers; expected the program_options closure" >&2; exit 1; }
mv "$inc/boost" "$inc/boost.full"
(cd "$inc/boost.full/.." && while read -r h; do
   mkdir -p "$(dirname "$h")"; cp -a "boost.full/${h#boost/}" "$h"; done < "$keep")
rm -rf "$inc/boost.full"
cp "$keep" "$SYSROOT/BOOST_HEADERS.txt"; rm -f "$keep"
log "Boost headers kept: $nboost"

# 4. Drop what no build needs ------------------------------------------------------------------
rm -rf "$SYSROOT"/usr/share/{doc,man,lintian,bug,info} "${SYSROOT:?}"/usr/src "${SYSROOT:?}"/etc
# Static libraries: only GoogleTest/GoogleMock are linked statically (Debian ships them .a only).
find "$SYSROOT" -name '*.a' ! -name 'libgtest*.a' ! -name 'libgmock*.a' -delete
# Executables: pkgconf alone (as pkg-config); HDF5's h5cc & co. carry absolute paths and are unused.
find "$SYSROOT/usr/bin" -mindepth 1 ! -name pkgconf -delete 2>/dev/null || true
ln -s pkgconf "$SYSROOT/usr/bin/pkg-config"
# HDF5 C++/Fortran/high-level bindings are not carried: remove their development links and config.
find "$SYSROOT/usr/lib/$ARCH_TRIPLET" \( -name 'libhdf5*_cpp*' -o -name 'libhdf5*fortran*' -o -name 'libhdf5*_hl*' \
  -o -name 'libhdf5_openmpi*' -o -name 'libhdf5_mpich*' \) -exec rm -rf {} + 2>/dev/null || true
rm -rf "$SYSROOT/usr/include/hdf5/serial/"*.mod "$SYSROOT/usr/include/hdf5/serial/static" "$SYSROOT/usr/include/hdf5/serial/shared"
# PCRE2: the 16/32-bit and POSIX flavours are not used.
rm -f "$SYSROOT/usr/lib/$ARCH_TRIPLET/"libpcre2-{16,32,posix}* "$SYSROOT/usr/lib/$ARCH_TRIPLET/pkgconfig/"libpcre2-{16,32,posix}.pc

# Absolute symlinks -> relative (inside the sysroot); dangling ones removed.
find "$SYSROOT" -type l | while read -r l; do
  t=$(readlink "$l")
  if [ "${t#/}" != "$t" ]; then
    ln -sfn "$(realpath -m --relative-to="$(dirname "$l")" "$SYSROOT$t")" "$l"
  fi
done
find "$SYSROOT" -xtype l -delete
find "$SYSROOT" -type d -empty -delete

# 5. Relocatable pkg-config files ---------------------------------------------------------------
for pc in $(find "$SYSROOT" -name '*.pc'); do
  rel=$(realpath -m --relative-to="$(dirname "$pc")" "$SYSROOT/usr")
  sed -i -e "s|^prefix=/usr\$|prefix=\${pcfiledir}/$rel|" \
         -e "s|=/usr/|=\${pcfiledir}/$rel/|g" -e "s|\([ =]-[IL]\)/usr/|\1\${pcfiledir}/$rel/|g" "$pc"
done

# 6. Checks: nothing in the sysroot's CMake/pkg-config files points back into /usr ----------------
export PKG_CONFIG_LIBDIR="$SYSROOT/usr/lib/$ARCH_TRIPLET/pkgconfig:$SYSROOT/usr/share/pkgconfig"
export LD_LIBRARY_PATH="$SYSROOT/usr/lib/$ARCH_TRIPLET${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
for m in sentencepiece libpcre2-8; do
  flags=$("$SYSROOT/usr/bin/pkgconf" --cflags --libs "$m")
  case " $flags " in *" -I/usr"*|*" -L/usr"*) echo "gpu-deps: pkg-config $m points into /usr: $flags" >&2; exit 1 ;; esac
  for lib in $(printf '%s\n' $flags | sed -n 's/^-l//p'); do
    ls "$SYSROOT/usr/lib/$ARCH_TRIPLET/lib$lib.so" >/dev/null || { echo "gpu-deps: lib$lib.so missing for $m" >&2; exit 1; }
  done
done
bad=$(grep -rlE '"/usr/(include|lib)' "$SYSROOT/usr/lib/$ARCH_TRIPLET/cmake" "$SYSROOT/usr/share/cmake" 2>/dev/null \
      | xargs -r grep -LE '_realOrig|cross-prefix' || true)
[ -z "$bad" ] || { echo "gpu-deps: CMake files with absolute /usr paths: $bad" >&2; exit 1; }
for f in usr/include/boost/program_options.hpp usr/include/hdf5/serial/hdf5.h usr/include/gtest/gtest.h \
         usr/include/gmock/gmock.h usr/include/yaml-cpp/yaml.h usr/include/nlohmann/json.hpp \
         usr/include/sentencepiece_processor.h usr/include/pcre2.h \
         usr/lib/$ARCH_TRIPLET/hdf5/serial/libhdf5.so usr/lib/$ARCH_TRIPLET/libboost_program_options.so \
         usr/lib/$ARCH_TRIPLET/libyaml-cpp.so usr/lib/$ARCH_TRIPLET/libgtest.a usr/lib/$ARCH_TRIPLET/libgmock.a \
         usr/lib/$ARCH_TRIPLET/cmake/Boost-1.74.0/BoostConfig.cmake usr/lib/$ARCH_TRIPLET/cmake/GTest/GTestConfig.cmake \
         usr/lib/$ARCH_TRIPLET/cmake/yaml-cpp/yaml-cpp-config.cmake usr/share/cmake/nlohmann_json/nlohmann_jsonConfig.cmake; do
  [ -e "$SYSROOT/$f" ] || { echo "gpu-deps: expected $f in the sysroot" >&2; exit 1; }
done

# 7. Size --------------------------------------------------------------------------------------
{ echo "# made by scripts/gpu-deps.sh on $(date -u +%FT%TZ) from $(. /etc/os-release; echo "$PRETTY_NAME")"
  echo "commit $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  echo "uncommitted_files $(git status --porcelain 2>/dev/null | wc -l)"; } > "$SYSROOT/README.txt"
kib=$(du -sk "$SYSROOT" | cut -f1)
log "packages: $(wc -l < "$SYSROOT/PACKAGES.txt") (list in $SYSROOT/PACKAGES.txt), $(( $(date +%s) - t0 ))s"
log "size of $SYSROOT: $(( kib / 1024 )).$(( (kib % 1024) * 10 / 1024 )) MiB ($kib KiB)"
if [ "$kib" -ge $(( LIMIT_MIB * 1024 )) ]; then
  echo "gpu-deps: the sysroot is over ${LIMIT_MIB} MiB; it must stay under it to travel (64 MiB per call)" >&2
  exit 1
fi
