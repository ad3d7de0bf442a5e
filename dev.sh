#!/usr/bin/env bash
# One command on a fresh machine: set up what is missing, then run the demo or the tests.
#
#   ./dev.sh demo      the end-to-end demo (README "Run"); extra arguments go to `shira demo`
#   ./dev.sh test      README "Test": the default run, then the long cases (what .ci/run calls)
#   ./dev.sh setup     only the set-up
#
# Safe to run again: Debian packages are installed only where missing (as root, or with sudo), and the virtual
# environment is (re)made only when it is missing or runtime/pyproject.toml or pyproject.toml changed since.
set -euo pipefail
cd "$(dirname "$0")"
what=${1:-}
[ $# -gt 0 ] && shift
case "$what" in demo|test|setup) ;; *) echo "usage: ./dev.sh demo|test|setup" >&2; exit 2 ;; esac

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian's packages the tests need: a JDK and JUnit (the Android app's Java core), Chromium and its driver (the
# web demo in a real browser). The arm64 tests install their own (tests/arm64/make_root.sh).
if [ "$what" = test ]; then
    missing=()
    for p in default-jdk-headless junit4 chromium chromium-driver; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        as_root apt-get update -q
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
fi

# The Python packages: both distributions of this repository, editable, with the CPU torch 2.13.0 wheel.
stamp=.venv/.shira-setup
want=$(cat pyproject.toml runtime/pyproject.toml | sha256sum | cut -c1-16)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    python3 -m venv .venv && .venv/bin/pip install -e ./runtime -e '.[dev,executorch]'
    echo "$want" > "$stamp"
fi

case "$what" in
    demo) exec .venv/bin/shira demo "$@" ;;
    test)
        .venv/bin/python -m pytest -q
        .venv/bin/python -m pytest -q -m "long or fuzz or arm64"
        ;;
esac
