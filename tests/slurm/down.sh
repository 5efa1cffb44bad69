#!/usr/bin/env bash
# Stop the one-node test cluster started by tests/slurm/up.sh. Idempotent.
#   down.sh            stop slurmd and slurmctld (munged keeps running)
#   down.sh --munge    also stop munged
#   down.sh --clean    cancel all jobs first, stop everything incl. munged, and
#                      wipe slurm state (/var/spool/slurmctld, /var/spool/slurmd)
# Note: without --clean, running jobs' processes (slurmstepd) survive a
# slurmd stop, and queued jobs are restored from state when up.sh runs again.
set -uo pipefail

STOP_MUNGE=0; CLEAN=0
for a in "$@"; do
    case "$a" in
        --munge) STOP_MUNGE=1 ;;
        --clean) STOP_MUNGE=1; CLEAN=1 ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "[slurm-down] unknown option: $a" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" -eq 0 ] || { echo "[slurm-down] ERROR: must run as root" >&2; exit 1; }

log() { echo "[slurm-down] $*" >&2; }

# stop PIDFILE NAME: TERM the daemon named in PIDFILE, KILL it after 20 s.
stop() {
    local pf=$1 name=$2 pid
    [ -s "$pf" ] || { log "$name: not running (no pid file)"; return 0; }
    pid=$(cat "$pf" 2>/dev/null)
    if ! [[ "$pid" =~ ^[0-9]+$ ]] || [ ! -r "/proc/$pid/comm" ] \
       || [ "$(cat "/proc/$pid/comm")" != "$name" ]; then
        log "$name: not running (stale pid file)"; rm -f "$pf"; return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name (pid $pid) ignored SIGTERM for 20s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true; sleep 0.5
    fi
    rm -f "$pf"
    log "$name stopped (pid $pid)"
}

if [ "$CLEAN" = 1 ] && command -v scancel >/dev/null && scontrol ping 2>/dev/null | grep -q UP; then
    log "cancelling all jobs"
    scancel --full --signal=KILL --state=RUNNING "--user=$(id -un)" 2>/dev/null || true
    scancel "--user=$(id -un)" 2>/dev/null || true
    for _ in $(seq 1 20); do
        [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.5
    done
fi

stop /run/slurmd.pid slurmd
stop /run/slurmctld.pid slurmctld
[ "$STOP_MUNGE" = 1 ] && stop /run/munge/munged.pid munged

if [ "$CLEAN" = 1 ]; then
    rm -rf /var/spool/slurmctld /var/spool/slurmd
    log "removed slurm state dirs"
fi
echo "slurm down"
