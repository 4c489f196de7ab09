#!/usr/bin/env bash
# Emulated Raspberry Pi OS userlands on this x86-64 machine, for the board-side tests.
#
#   scripts/board-emulation.sh [build] [ENV...]      build or refresh (idempotent, cached)
#   scripts/board-emulation.sh run ENV CMD [ARG...]  run CMD on the emulated board
#
# ENV (all three by default):
#   aarch64-board   64-bit Raspberry Pi OS (bookworm, arm64), edgefl[board]: ai-edge-litert
#   aarch64-legacy  64-bit Raspberry Pi OS, edgefl[board-legacy]: tflite-runtime 2.14, numpy<2
#   armhf-legacy    32-bit Raspberry Pi OS (armhf), edgefl[board-legacy] with Debian's numpy
#                   and cffi (PyPI has no armv7l wheels of numpy<2 or cffi)
#
# Each ENV is a directory $EDGEFL_EMU_CACHE/ENV (default /var/cache/edgefl-emulation) holding
# `rootfs/`, a Debian 12 userland of the board's architecture, and in it `/home/pi/edgefl`, the
# client installed exactly as docs/deployment.md §1 says. How it is made:
#   1. Debian packages (no foreign code runs): apt resolves the closure of python3 for the
#      foreign architecture against an empty dpkg status, as on a fresh system; `apt-get
#      download` fetches it from Debian's mirror; `dpkg-deb -x` unpacks it; /bin, /sbin and
#      /lib are folded into /usr (merged /usr, as bookworm installs it); ld.so.cache is left
#      empty; the two links the libblas3/liblapack3 maintainer scripts would make are made.
#   2. The board's wheels, on this machine: the client wheel (`pip wheel --no-deps
#      --no-build-isolation`) and `pip download --platform manylinux_2_17_ARCH ...
#      manylinux_2_36_ARCH --python-version 3.11 --only-binary=:all:` into /home/pi/wheels.
#   3. On the emulated board (qemu user mode in a chroot): `python3 -m venv --without-pip`,
#      pip from its own wheel, `pip install --no-index --find-links`, `pip check`.
# A changed client only reinstalls the client wheel; changed requirements reinstall the venv.
#
# `run` starts CMD (a path on the board, or a name in /home/pi/edgefl/bin) as
# `chroot ROOTFS qemu-ARCH-static -cpu CPU ...` in a private mount namespace (`unshare -m`)
# with /proc, /dev, /sys and /tmp of this machine bound in, and a Raspberry Pi 4's
# /proc/cpuinfo bound over this machine's: LiteRT >= 2.2 reads /proc/cpuinfo at start-up and
# crashes on an x86 one. No binfmt_misc is needed; a board process cannot start another
# foreign program (the client never does). EDGEFL_* variables pass through; EDGEFL_EMU_SHARE
# (colon-separated directories) binds more host directories at the same paths. Needs root.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
SELF="$REPO/scripts/board-emulation.sh"
CACHE=${EDGEFL_EMU_CACHE:-/var/cache/edgefl-emulation}
ENVS=(aarch64-board aarch64-legacy armhf-legacy)
# Bump when the way a userland is made changes: every cached rootfs is rebuilt.
ROOTFS_VERSION=1
GLIBC_MINOR=36 # bookworm's glibc 2.36: wheels up to manylinux_2_36 fit the boards
BOARD_HOME=/home/pi
VENV=$BOARD_HOME/edgefl
WHEELS=$BOARD_HOME/wheels

say() { echo "board-emulation: $*" >&2; }
die() {
  echo "board-emulation: error: $*" >&2
  exit 1
}

env_arch() { # Debian architecture, wheel platform, qemu, emulated CPU
  case $1 in
  aarch64-board | aarch64-legacy) echo "arm64 aarch64 qemu-aarch64-static cortex-a72" ;;
  armhf-legacy) echo "armhf armv7l qemu-arm-static cortex-a7" ;;
  *) die "unknown emulated board '$1': use one of ${ENVS[*]}" ;;
  esac
}

env_extra() { case $1 in *-board) echo board ;; *) echo board-legacy ;; esac }

env_debs() { # Debian packages of the userland (the closure is resolved by apt)
  case $1 in
  armhf-*) echo "python3 libstdc++6 python3-numpy python3-cffi" ;;
  *) echo "python3 libstdc++6" ;;
  esac
}

platform_args() { # every manylinux tag from 2_17 to the board's glibc: pip matches exactly
  local n
  for n in $(seq 17 "$GLIBC_MINOR"); do printf -- '--platform manylinux_2_%s_%s ' "$n" "$1"; done
}

# Requirements pip downloads for 32-bit boards (--no-deps): numpy and cffi come from Debian
# (python3-numpy 1.24, python3-cffi 1.15); cryptography 46 and later need cffi >= 2.
ARMHF_REQUIREMENTS=("tflite-runtime==2.14.0" "cryptography>=42,<46" "paho-mqtt>=2.0" "click>=8.1")

host_python() {
  if [ -x "$REPO/.venv/bin/python" ]; then echo "$REPO/.venv/bin/python"; else command -v python3; fi
}

check_host() {
  [ "$(id -u)" -eq 0 ] || die "needs root (unshare -m, chroot, apt-get); run it with sudo"
  [ "$(uname -m)" = x86_64 ] || die "needs an x86-64 host, this is $(uname -m)"
  # shellcheck disable=SC1091
  (. /etc/os-release && [ "${VERSION_CODENAME:-}" = bookworm ]) ||
    die "needs Debian 12 (bookworm): apt resolves the boards' bookworm packages"
  if ! command -v qemu-aarch64-static >/dev/null || ! command -v qemu-arm-static >/dev/null; then
    say "installing qemu-user-static with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static >/dev/null
  fi
}

apt_opts() { # apt as on a fresh system of architecture $1, without touching this one's state
  echo "-o APT::Architecture=$1 -o APT::Architectures::=$1 -o Dir::State::status=$CACHE/apt/empty-status" \
    "-o Dir::Cache=$CACHE/apt/$1 -o Debug::NoLocking=1 -o APT::Sandbox::User=root -qq"
}

ensure_foreign_arch() {
  local arch=$1
  mkdir -p "$CACHE/apt/$arch"
  : >"$CACHE/apt/empty-status"
  if ! dpkg --print-foreign-architectures | grep -qx "$arch"; then
    say "dpkg --add-architecture $arch"
    dpkg --add-architecture "$arch"
  fi
  # shellcheck disable=SC2046
  if ! apt-cache $(apt_opts "$arch") show python3.11 >/dev/null 2>&1; then
    say "apt-get update (package lists for $arch)"
    apt-get update -qq
  fi
}

cpuinfo() { # a Raspberry Pi 4's /proc/cpuinfo, for a 64-bit or a 32-bit userland
  local i
  for i in 0 1 2 3; do
    if [ "$1" = armv7l ]; then
      printf 'processor\t: %s\nmodel name\t: ARMv7 Processor rev 3 (v7l)\nBogoMIPS\t: 108.00\n' "$i"
      printf 'Features\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm crc32\n'
      printf 'CPU implementer\t: 0x41\nCPU architecture: 7\n'
    else
      printf 'processor\t: %s\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n' "$i"
      printf 'CPU implementer\t: 0x41\nCPU architecture: 8\n'
    fi
    printf 'CPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n'
  done
  [ "$1" = armv7l ] && printf 'Hardware\t: BCM2835\n'
  printf 'Revision\t: c03115\nSerial\t\t: 100000000a1b2c3d\nModel\t\t: Raspberry Pi 4 Model B Rev 1.5\n'
}

build_rootfs() { # $1 = ENV: the Debian userland, from packages only
  local env=$1 dir=$CACHE/$1 arch plat qemu cpu
  read -r arch plat qemu cpu < <(env_arch "$env")
  local want
  want=$(echo "$ROOTFS_VERSION $arch $(env_debs "$env")" | sha256sum | cut -c1-16)
  if [ -d "$dir/rootfs" ] && [ "$(cat "$dir/rootfs.stamp" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  ensure_foreign_arch "$arch"
  say "$env: resolving and downloading Debian bookworm $arch packages ($(env_debs "$env"))"
  local tmp=$dir/rootfs.new debs=$dir/debs
  rm -rf "$tmp" "$debs" "$dir/rootfs.stamp" "$dir/venv.stamp" "$dir/client.stamp"
  mkdir -p "$tmp" "$debs"
  local pkgs
  # shellcheck disable=SC2046
  pkgs=$(apt-get -s $(apt_opts "$arch") --no-install-recommends install $(env_debs "$env") |
    awk '/^Inst /{print $2}')
  [ -n "$pkgs" ] || die "apt resolved no packages for $arch"
  # shellcheck disable=SC2046,SC2086
  if ! (cd "$debs" && apt-get $(apt_opts "$arch") download $pkgs); then
    say "download failed: apt-get update (the package lists may be stale), then once more"
    apt-get update -qq
    # shellcheck disable=SC2046
    pkgs=$(apt-get -s $(apt_opts "$arch") --no-install-recommends install $(env_debs "$env") |
      awk '/^Inst /{print $2}')
    # shellcheck disable=SC2046,SC2086
    (cd "$debs" && apt-get $(apt_opts "$arch") download $pkgs)
  fi
  say "$env: unpacking $(echo "$pkgs" | wc -w) packages with dpkg-deb -x"
  local deb
  for deb in "$debs"/*.deb; do dpkg-deb -x "$deb" "$tmp"; done
  local d
  for d in bin sbin lib; do # merged /usr
    if [ -d "$tmp/$d" ] && [ ! -L "$tmp/$d" ]; then
      mkdir -p "$tmp/usr/$d"
      cp -a "$tmp/$d/." "$tmp/usr/$d/"
      rm -rf "${tmp:?}/$d"
    fi
    ln -sfn "usr/$d" "$tmp/$d"
  done
  : >"$tmp/etc/ld.so.cache"
  local triplet
  triplet=$(basename "$(find "$tmp/usr/lib" -maxdepth 1 -name '*-linux-gnu*' -type d | head -1)")
  for d in blas lapack; do # what update-alternatives would do in the postinst
    if [ -e "$tmp/usr/lib/$triplet/$d/lib$d.so.3" ]; then
      ln -sfn "$d/lib$d.so.3" "$tmp/usr/lib/$triplet/lib$d.so.3"
    fi
  done
  mkdir -p "$tmp/proc" "$tmp/dev" "$tmp/sys" "$tmp/tmp" "$tmp/usr/libexec" "$tmp$BOARD_HOME"
  chmod 1777 "$tmp/tmp"
  : >"$tmp/usr/libexec/qemu-static" # bind-mount target for this machine's qemu
  printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$tmp/etc/hosts"
  printf 'root:x:0:0:root:/root:/bin/sh\npi:x:1000:1000::/home/pi:/bin/sh\n' >"$tmp/etc/passwd"
  printf 'root:x:0:\npi:x:1000:\n' >"$tmp/etc/group"
  cpuinfo "$plat" >"$dir/cpuinfo"
  rm -rf "$dir/rootfs" "$debs"
  mv "$tmp" "$dir/rootfs"
  echo "$want" >"$dir/rootfs.stamp"
}

build_client_wheel() { # into $1; from a clean copy of the sources (no stale build/ dir)
  local out=$1 src
  src=$(mktemp -d)
  cp -r "$REPO/setup.cfg" "$REPO/pyproject.toml" "$REPO/README.md" "$src/"
  local pkg
  for pkg in edge_client coordinator model_export devices; do
    cp -r "$REPO/$pkg" "$src/"
  done
  find "$src" -name __pycache__ -prune -exec rm -rf {} +
  "$(host_python)" -m pip wheel -q --no-deps --no-build-isolation -w "$out" "$src" >/dev/null
  rm -rf "$src"
}

record_hash() { # the client wheel's content hash (its RECORD lists every file's sha256)
  "$(host_python)" - "$1" <<'EOF'
import hashlib, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    record = next(n for n in z.namelist() if n.endswith(".dist-info/RECORD"))
    print(hashlib.sha256(z.read(record)).hexdigest()[:16])
EOF
}

download_wheels() { # $1 = ENV, $2 = client wheel, $3 = destination
  local env=$1 client=$2 dest=$3 arch plat qemu cpu
  read -r arch plat qemu cpu < <(env_arch "$env")
  local pip
  pip=("$(host_python)" -m pip download -q --dest "$dest" --only-binary=:all:
    --python-version 3.11)
  # shellcheck disable=SC2207
  pip+=($(platform_args "$plat"))
  if [ "$plat" = armv7l ]; then
    pip+=(--no-deps "${ARMHF_REQUIREMENTS[@]}" pip)
  else
    pip+=("$client[$(env_extra "$env")]" pip)
  fi
  if ! "${pip[@]}" >"$dest.log" 2>&1; then
    grep -v 'is ignored' "$dest.log" >&2 || true
    die "$env: pip download failed: ${pip[*]}"
  fi
  rm -f "$dest.log"
  cp "$client" "$dest/"
}

build_venv() { # $1 = ENV: the board's wheels and the client, installed on the board
  local env=$1 dir=$CACHE/$1 rootfs=$CACHE/$1/rootfs
  local arch plat qemu cpu
  read -r arch plat qemu cpu < <(env_arch "$env")
  local client tmp
  tmp=$(mktemp -d)
  build_client_wheel "$tmp"
  client=$(ls "$tmp"/edgefl-*.whl)
  local want_venv want_client
  want_venv=$( (
    echo "$ROOTFS_VERSION $plat $(env_extra "$env") ${ARMHF_REQUIREMENTS[*]}"
    unzip -p "$client" '*.dist-info/METADATA' | grep '^Requires-Dist'
  ) | sha256sum | cut -c1-16)
  want_client=$(record_hash "$client")
  if [ "$(cat "$dir/venv.stamp" 2>/dev/null)" != "$want_venv" ]; then
    say "$env: downloading the board's wheels for $plat (Python 3.11, manylinux up to 2_$GLIBC_MINOR)"
    local wheels=$rootfs$WHEELS
    rm -rf "$wheels" "$rootfs$VENV" "$dir/client.stamp"
    mkdir -p "$wheels"
    download_wheels "$env" "$client" "$wheels"
    say "$env: installing on the emulated board: venv, pip install --no-index 'edgefl[$(env_extra "$env")]'"
    local system_site=()
    [ "$plat" = armv7l ] && system_site=(--system-site-packages)
    "$SELF" run "$env" /usr/bin/python3 -m venv --without-pip "${system_site[@]}" "$VENV"
    local pipwhl
    pipwhl=$(cd "$rootfs$WHEELS" && ls pip-*.whl | head -1)
    "$SELF" run "$env" "$VENV/bin/python3" "$WHEELS/$pipwhl/pip" install -q --no-index \
      --find-links "$WHEELS" pip "edgefl[$(env_extra "$env")]"
    "$SELF" run "$env" "$VENV/bin/pip" check
    echo "$want_venv" >"$dir/venv.stamp"
    echo "$want_client" >"$dir/client.stamp"
  elif [ "$(cat "$dir/client.stamp" 2>/dev/null)" != "$want_client" ]; then
    say "$env: the client changed: reinstalling its wheel on the emulated board"
    cp "$client" "$rootfs$WHEELS/"
    "$SELF" run "$env" "$VENV/bin/pip" install -q --no-index --no-deps --force-reinstall \
      "$WHEELS/$(basename "$client")"
    echo "$want_client" >"$dir/client.stamp"
  fi
  rm -rf "$tmp"
}

run() { # $1 = ENV, then the command: enter a private mount namespace (see `enter`)
  local env=$1
  shift
  [ $# -ge 1 ] || die "usage: $0 run ENV CMD [ARG...]"
  env_arch "$env" >/dev/null
  [ -d "$CACHE/$env/rootfs" ] || die "$env is not built: run scripts/board-emulation.sh $env"
  exec unshare -m --propagation private "$SELF" __enter "$env" "$@"
}

enter() { # in the private mount namespace: bind what the board needs, chroot, emulate
  local env=$1 rootfs=$CACHE/$1/rootfs
  shift
  local arch plat qemu cpu
  read -r arch plat qemu cpu < <(env_arch "$env")
  mount --rbind /proc "$rootfs/proc"
  mount --bind "$CACHE/$env/cpuinfo" "$rootfs/proc/cpuinfo"
  mount --rbind /dev "$rootfs/dev"
  mount --rbind /sys "$rootfs/sys"
  mount --bind /tmp "$rootfs/tmp"
  mount --bind "$(command -v "$qemu")" "$rootfs/usr/libexec/qemu-static"
  local share
  IFS=: read -ra share <<<"${EDGEFL_EMU_SHARE:-}"
  for d in "${share[@]}"; do
    [ -n "$d" ] && [[ $d != /tmp/* ]] || continue
    mkdir -p "$rootfs$d"
    mount --bind "$d" "$rootfs$d"
  done
  local cmd=$1
  shift
  if [[ $cmd != /* ]]; then # a name: the client's venv first, then the system
    if [ -e "$rootfs$VENV/bin/$cmd" ]; then cmd=$VENV/bin/$cmd; else cmd=/usr/bin/$cmd; fi
  fi
  local interp=()
  if [ "$(head -c2 "$rootfs$cmd" 2>/dev/null)" = "#!" ]; then # no binfmt: run the interpreter
    read -ra interp < <(head -1 "$rootfs$cmd" | cut -c3-)
  fi
  local vars=(HOME=$BOARD_HOME "PATH=$VENV/bin:/usr/local/bin:/usr/bin:/bin" LANG=C.UTF-8)
  local v
  while IFS= read -r v; do vars+=("$v"); done < <(env | grep '^EDGEFL_' | grep -v '^EDGEFL_EMU_' || true)
  exec env -i "${vars[@]}" "$(command -v chroot)" "$rootfs" /usr/libexec/qemu-static -cpu "$cpu" \
    "${interp[@]}" "$cmd" "$@"
}

build() {
  local envs=("$@")
  [ ${#envs[@]} -gt 0 ] || envs=("${ENVS[@]}")
  local env
  for env in "${envs[@]}"; do env_arch "$env" >/dev/null; done
  check_host
  mkdir -p "$CACHE"
  exec 9>"$CACHE/.lock"
  flock 9
  for env in "${envs[@]}"; do build_rootfs "$env"; done # apt: one at a time
  # The installs on the emulated boards are single-threaded: run them side by side.
  local pids=() failed=0
  for env in "${envs[@]}"; do
    build_venv "$env" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  [ "$failed" -eq 0 ] || die "building an emulated board failed (see above)"
  for env in "${envs[@]}"; do echo "$env $CACHE/$env/rootfs"; done
}

case ${1:-build} in
run)
  shift
  run "$@"
  ;;
__enter)
  shift
  enter "$@"
  ;;
build)
  shift || true
  build "$@"
  ;;
-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' ;;
*) build "$@" ;;
esac
