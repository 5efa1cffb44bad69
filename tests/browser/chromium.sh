#!/usr/bin/env bash
# Install Debian's headless-capable Chromium for the report's browser test (tests/test_report_browser.py),
# the way tests/slurm/up.sh installs SLURM: Debian 12, as root, idempotent. Prints the binary's path.
set -euo pipefail

log() { echo "[chromium] $*" >&2; }
die() { echo "[chromium] ERROR: $*" >&2; exit 1; }

for name in chromium chromium-browser; do
    if command -v "$name" >/dev/null; then command -v "$name"; exit 0; fi
done
[ "$(id -u)" -eq 0 ] || die "chromium is not installed and installing it needs root (got uid $(id -u)): apt-get install chromium"
command -v apt-get >/dev/null || die "chromium is not installed and there is no apt-get to install it"

T0=$(date +%s)
log "installing chromium via apt-get ..."
export DEBIAN_FRONTEND=noninteractive
rc=0
# The dpkg lock may be held by another installer on a shared machine: wait for it rather than fail.
{ apt-get -o DPkg::Lock::Timeout=600 update -qq && \
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
      -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
      chromium fonts-dejavu-core; } >/tmp/chromium-apt.log 2>&1 || rc=$?
if [ "$rc" != 0 ]; then
    tail -n 30 /tmp/chromium-apt.log >&2
    die "apt-get install chromium failed (rc=$rc), see /tmp/chromium-apt.log"
fi
log "installed in $(( $(date +%s) - T0 ))s"
command -v chromium || die "apt-get installed chromium but no chromium binary is on PATH"
