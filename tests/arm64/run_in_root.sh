#!/usr/bin/env bash
# Run a command inside the emulated arm64 root as a given CPU, with the device runtime importable.
#
#   tests/arm64/run_in_root.sh ROOT CPU WORK_DIR COMMAND...
#
# CPU is a qemu CPU model (QEMU_CPU): cortex-a72 (ARMv8.0, no dot product), cortex-a76 or neoverse-n1
# (ARMv8.2 with dotprod, like most phones since 2019), max (every feature qemu has: SVE, i8mm, ...).
# In a private mount namespace (nothing stays mounted after it): /proc and /dev from the host, WORK_DIR at
# /work (read-write), this checkout's runtime/ at /opt/shira/runtime (read-only), and a small /sys that says
# two CPUs of the emulated model: with the host's /sys, `import onnxruntime` died under qemu; with none,
# cpuinfo cannot start (ONNX Runtime then reads the CPU's features from the auxiliary vector, which qemu
# fills for the emulated model). Needs root.
set -euo pipefail
root=${1:?usage: run_in_root.sh ROOT CPU WORK_DIR COMMAND...}
cpu=${2:?}
work=${3:?}
shift 3
runtime=$(cd "$(dirname "$0")/../../runtime" && pwd)
case "$cpu" in  # MIDR_EL1 of the model, as the kernel shows it in sysfs
    cortex-a72) midr=0x00000000410fd083 ;;
    cortex-a76) midr=0x00000000414fd0b1 ;;
    neoverse-n1) midr=0x00000000413fd0c1 ;;
    *) midr=0x00000000414fd0b1 ;;  # max: qemu's own model; cpuinfo is told it is a Cortex-A76
esac
exec unshare --mount --propagation private /bin/bash -euc '
    root=$1 midr=$2 work=$3 runtime=$4 cpu=$5
    shift 5
    mount -t proc proc "$root/proc"
    mount --rbind /dev "$root/dev"
    mount -t tmpfs tmpfs "$root/sys"
    d="$root/sys/devices/system/cpu"
    mkdir -p "$d"
    for f in possible present online; do echo 0-1 > "$d/$f"; done
    for c in 0 1; do mkdir -p "$d/cpu$c/regs/identification"; echo "$midr" > "$d/cpu$c/regs/identification/midr_el1"; done
    mkdir -p "$root/work" "$root/opt/shira/runtime"
    mount --bind "$work" "$root/work"
    mount --bind -o ro "$runtime" "$root/opt/shira/runtime"
    exec chroot "$root" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/tmp LANG=C.UTF-8 QEMU_CPU="$cpu" \
        PYTHONPATH=/opt/site:/opt/shira/runtime PYTHONDONTWRITEBYTECODE=1 "$@"
' run_in_root "$root" "$midr" "$work" "$runtime" "$cpu" "$@"
