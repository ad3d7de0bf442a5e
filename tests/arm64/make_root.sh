#!/usr/bin/env bash
# An emulated arm64 (aarch64) Debian root with the device runtime's wheels, for tests/test_arm64.py.
#
#   tests/arm64/make_root.sh ROOT 'numpy==X' 'onnxruntime==Y' ...
#
# Makes ROOT once (cached: a second call with the same packages does nothing) from Debian's own packages:
# qemu-user-static runs the arm64 programs through binfmt_misc, debootstrap lays a minimal root of the host's
# Debian release from the mirror apt is configured with, and pip puts PyPI's manylinux aarch64 wheels of the
# given packages (and nothing of torch or the toolchain) into ROOT/opt/site. Needs root (apt, mount, chroot).
# About 8 minutes the first time on a 2-core x86-64 box, most of it debootstrap's emulated second stage.
set -euo pipefail
root=${1:?usage: make_root.sh ROOT PACKAGE...}
shift
[ "$(id -u)" = 0 ] || { echo "make_root.sh: needs root (apt-get, mount, chroot)" >&2; exit 2; }

# 1. qemu for arm64 programs, registered with the kernel (binfmt_misc), and debootstrap.
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
[ -e /usr/libexec/qemu-binfmt/aarch64-binfmt-P ] || [ -e /usr/bin/qemu-aarch64-static ] || need+=(qemu-user-static)
command -v update-binfmts >/dev/null || need+=(binfmt-support)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
[ -e /proc/sys/fs/binfmt_misc/status ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
grep -q enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 || { echo "make_root.sh: cannot register qemu-aarch64 with binfmt_misc" >&2; exit 1; }

# 2. The Debian root (python3 of the host's release), made in ROOT.tmp and renamed: a killed run leaves no
#    half root that looks whole.
suite=$(. /etc/os-release && echo "$VERSION_CODENAME")
mirror=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | grep -v security | head -n1)
[ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
[ -n "$mirror" ] || { echo "make_root.sh: no Debian mirror found in apt's sources" >&2; exit 1; }
if [ ! -e "$root/.debootstrap-done" ]; then
    rm -rf "$root.tmp"
    mkdir -p "$(dirname "$root")"
    echo "make_root.sh: debootstrap --arch=arm64 $suite (emulated; several minutes)" >&2
    debootstrap --arch=arm64 --variant=minbase --include=python3,ca-certificates "$suite" "$root.tmp" "$mirror" \
        > "$root.debootstrap.log" 2>&1 || { tail -n 20 "$root.debootstrap.log" >&2; exit 1; }
    touch "$root.tmp/.debootstrap-done"
    rm -rf "$root"
    mv "$root.tmp" "$root"
fi

# 3. The runtime's dependencies: PyPI's aarch64 wheels, unpacked by the host's pip into ROOT/opt/site.
want=$(printf '%s\n' "$@" | sort | tr '\n' ' ')
if [ "$(cat "$root/opt/site.packages" 2>/dev/null)" != "$want" ]; then
    rm -rf "$root/opt/site.tmp"
    python3 -m pip install -q --no-cache-dir --target "$root/opt/site.tmp" --only-binary=:all: \
        --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 \
        --python-version "$(chroot "$root" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')" \
        --implementation cp "$@"
    rm -rf "$root/opt/site"
    mv "$root/opt/site.tmp" "$root/opt/site"
    echo "$want" > "$root/opt/site.packages"
fi
echo "$root"
