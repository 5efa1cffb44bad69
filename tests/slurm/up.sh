#!/usr/bin/env bash
# Bring up a real one-node SLURM cluster (slurmctld + slurmd + munged) on this
# machine, for tests and CI.  Debian 12, must run as root, no systemd needed.
# Idempotent: safe to run again while the cluster is up.
#
# Env overrides:
#   SLURM_UP_TIMEOUT   seconds to wait for the node to become idle (default 60)
#   SLURM_NODE_MEM     RealMemory in MB for the node (default min(20000, 90% of RAM))
#   SLURM_MIN_JOB_AGE  seconds finished jobs stay visible in scontrol (default 30)
set -euo pipefail

T0=$(date +%s)
TIMEOUT=${SLURM_UP_TIMEOUT:-60}
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
LOG_DIR=/var/log/slurm
CTLD_SPOOL=/var/spool/slurmctld
SLURMD_SPOOL=/var/spool/slurmd
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_KEY=/etc/munge/munge.key
MUNGE_RUN=/run/munge

log() { echo "[slurm-up] $*" >&2; }
die() { echo "[slurm-up] ERROR: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (got uid $(id -u))"

NODE=$(hostname -s 2>/dev/null || true)
[ -n "$NODE" ] || die "hostname -s returned nothing; set a hostname first"

# pid_alive PIDFILE NAME: true if PIDFILE names a live process whose comm is NAME
pid_alive() {
    local pf=$1 name=$2 pid
    [ -s "$pf" ] || return 1
    pid=$(cat "$pf" 2>/dev/null) || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$name" ]
}

# ---------------------------------------------------------------- 1. install
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
   || ! command -v sinfo >/dev/null || ! command -v munged >/dev/null; then
    log "installing slurm-wlm munge via apt-get ..."
    export DEBIAN_FRONTEND=noninteractive
    # Keep package maintainer scripts from starting services themselves; we
    # start the daemons below with our own config.
    POLICY=/usr/sbin/policy-rc.d
    made_policy=0
    if [ ! -e "$POLICY" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$POLICY"; chmod 755 "$POLICY"; made_policy=1
    fi
    rc=0
    { apt-get update -qq && \
      apt-get install -y -qq --no-install-recommends \
          -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
          slurm-wlm munge; } >/tmp/slurm-up-apt.log 2>&1 || rc=$?
    [ "$made_policy" = 1 ] && rm -f "$POLICY"
    if [ "$rc" != 0 ]; then
        tail -n 30 /tmp/slurm-up-apt.log >&2
        die "apt-get install slurm-wlm munge failed (rc=$rc), see /tmp/slurm-up-apt.log"
    fi
    log "installed in $(( $(date +%s) - T0 ))s"
fi

# ---------------------------------------------------------------- 2. munge
if [ ! -s "$MUNGE_KEY" ]; then
    log "creating munge key $MUNGE_KEY"
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null; then
        mungekey --create --keyfile="$MUNGE_KEY" --force
    else
        dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none
    fi
fi
MUNGE_USER=root
id munge >/dev/null 2>&1 && MUNGE_USER=munge
chown "$MUNGE_USER:$MUNGE_USER" "$MUNGE_KEY"; chmod 400 "$MUNGE_KEY"
mkdir -p "$MUNGE_RUN" /var/lib/munge /var/log/munge
chown "$MUNGE_USER:$MUNGE_USER" "$MUNGE_RUN" /var/lib/munge /var/log/munge
chmod 755 "$MUNGE_RUN"; chmod 700 /var/lib/munge /var/log/munge
chown "$MUNGE_USER:$MUNGE_USER" /etc/munge; chmod 700 /etc/munge

if ! pid_alive "$MUNGE_RUN/munged.pid" munged; then
    log "starting munged as $MUNGE_USER"
    rm -f "$MUNGE_RUN/munge.socket.2.lock" 2>/dev/null || true
    if [ "$MUNGE_USER" = munge ]; then
        runuser -u munge -- /usr/sbin/munged
    else
        /usr/sbin/munged --force
    fi
fi
for _ in $(seq 1 20); do
    munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break
    sleep 0.5
done
munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 \
    || die "munge does not work (munge -n | unmunge fails); see /var/log/munge/munged.log"

# ---------------------------------------------------------------- 3. config
NCPU=$(nproc)
TOPO="CPUs=$NCPU"
# Use slurmd's own view of the hardware so the node never registers with a
# topology that differs from the config (which would make it drain).
HW=$(slurmd -C 2>/dev/null | head -n1 || true)
if [[ "$HW" =~ CPUs=([0-9]+).*Boards=([0-9]+).*SocketsPerBoard=([0-9]+).*CoresPerSocket=([0-9]+).*ThreadsPerCore=([0-9]+) ]]; then
    TOPO="CPUs=${BASH_REMATCH[1]} Boards=${BASH_REMATCH[2]} SocketsPerBoard=${BASH_REMATCH[3]} CoresPerSocket=${BASH_REMATCH[4]} ThreadsPerCore=${BASH_REMATCH[5]}"
    NCPU=${BASH_REMATCH[1]}
fi
TOTAL_MB=$(awk '/^MemTotal:/ {print int($2/1024)}' /proc/meminfo)
MEM=${SLURM_NODE_MEM:-$(( TOTAL_MB * 9 / 10 < 20000 ? TOTAL_MB * 9 / 10 : 20000 ))}
MIN_JOB_AGE=${SLURM_MIN_JOB_AGE:-30}

mkdir -p "$CONF_DIR" "$LOG_DIR" "$CTLD_SPOOL" "$SLURMD_SPOOL"
chmod 755 "$CTLD_SPOOL" "$SLURMD_SPOOL"

NEW_CONF=$(mktemp)
trap 'rm -f "$NEW_CONF"' EXIT
cat > "$NEW_CONF" <<CONF
# Written by tests/slurm/up.sh -- one-node test cluster. Edits are overwritten.
ClusterName=batchgen-test
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# Job credential lifetime; also how long a requeued job waits before it may
# start again (default 120 s -- too slow for tests; minimum 5).
AuthInfo=cred_expire=10
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# Run the scheduling loops often so requeued jobs restart promptly (defaults 60/30 s).
SchedulerParameters=sched_interval=2,bf_interval=2
StateSaveLocation=$CTLD_SPOOL
SlurmdSpoolDir=$SLURMD_SPOOL
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No slurmdbd: sacct does not work. Finished jobs are logged to JobCompLoc.
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG_DIR/jobcomp.log
ReturnToService=2
JobRequeue=1
KillWait=30
MinJobAge=$MIN_JOB_AGE
SlurmdTimeout=60
SlurmctldTimeout=60
InactiveLimit=0
Waittime=0
NodeName=$NODE NodeAddr=127.0.0.1 $TOPO RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF

CONF_CHANGED=0
if ! cmp -s "$NEW_CONF" "$CONF"; then
    install -m 644 "$NEW_CONF" "$CONF"
    CONF_CHANGED=1
    log "wrote $CONF"
fi
if [ ! -e "$CONF_DIR/cgroup.conf" ]; then
    # Not used (no cgroup plugins); present so nothing complains about it.
    printf '# Written by tests/slurm/up.sh; cgroups are not used.\nCgroupPlugin=autodetect\n' > "$CONF_DIR/cgroup.conf"
fi

# ---------------------------------------------------------------- 4. daemons
if [ "$CONF_CHANGED" = 1 ]; then
    # A running daemon has the old config: restart it.
    for pair in "$SLURMD_PID slurmd" "$CTLD_PID slurmctld"; do
        set -- $pair
        if pid_alive "$1" "$2"; then
            log "config changed: restarting $2"
            pid=$(cat "$1"); kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        fi
    done
fi
if ! pid_alive "$CTLD_PID" slurmctld; then
    log "starting slurmctld"
    slurmctld || die "slurmctld failed to start; see $LOG_DIR/slurmctld.log"
fi
for _ in $(seq 1 40); do scontrol ping >/dev/null 2>&1 && break; sleep 0.5; done
scontrol ping 2>/dev/null | grep -q UP || {
    tail -n 20 "$LOG_DIR/slurmctld.log" >&2 || true
    die "slurmctld is not answering (scontrol ping); see $LOG_DIR/slurmctld.log"; }
if ! pid_alive "$SLURMD_PID" slurmd; then
    log "starting slurmd"
    slurmd || die "slurmd failed to start; see $LOG_DIR/slurmd.log"
fi

# ---------------------------------------------------------------- 5. wait
state=""
resumed=0
deadline=$(( $(date +%s) + TIMEOUT ))
while :; do
    state=$(sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -n1 || true)
    case "$state" in
        idle|mixed|allocated|completing) break ;;
        *drain*|down*|fail*|*'~'*)
            if [ "$resumed" -lt 3 ]; then
                reason=$(sinfo -h -N -n "$NODE" -o '%E' 2>/dev/null | head -n1 || true)
                log "node $NODE is '$state' (reason: ${reason:-none}); resuming"
                scontrol update nodename="$NODE" state=resume 2>/dev/null \
                    || scontrol update nodename="$NODE" state=idle 2>/dev/null || true
                resumed=$((resumed + 1))
            fi ;;
    esac
    if [ "$(date +%s)" -ge "$deadline" ]; then
        tail -n 15 "$LOG_DIR/slurmctld.log" >&2 || true
        tail -n 15 "$LOG_DIR/slurmd.log" >&2 || true
        die "node $NODE not idle after ${TIMEOUT}s (state: '${state:-unknown}'); logs in $LOG_DIR"
    fi
    sleep 1
done

VER=$(sinfo --version 2>/dev/null | awk '{print $2}')
echo "slurm up: slurm $VER, node $NODE ($NCPU CPUs, ${MEM} MB) partition debug state=$state, took $(( $(date +%s) - T0 ))s"
