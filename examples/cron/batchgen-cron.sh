#!/bin/bash
# Run or resume a batchgen job from cron, one instance at a time.
#
#   crontab -e:
#   */15 * * * * /opt/batchgen/examples/cron/batchgen-cron.sh /data/jobs/nightly.yaml >> /var/log/batchgen-nightly.log 2>&1
#
# Each tick starts `batchgen run JOB` unless the previous one still runs (flock). An interrupted run
# (exit 75: SIGTERM, reboot, store unreachable) is simply resumed by the next tick, exactly once; a
# finished job costs a few seconds per tick (batchgen sees every unit committed and exits 0).
# Remove the crontab line once `_SUCCESS.json` is in the output folder.
#
# Settings (environment, or set them in the crontab):
#   BATCHGEN_CMD    how to run batchgen (default: batchgen), e.g. "/opt/venv/bin/python -m batchgen"
#   BATCHGEN_LOCK   lock file (default: /tmp/batchgen-<job name>.lock)
set -uo pipefail

JOB=${1:?usage: batchgen-cron.sh JOB.yaml [batchgen run flags ...]}
shift
read -r -a BATCHGEN <<< "${BATCHGEN_CMD:-batchgen}"
LOCK=${BATCHGEN_LOCK:-/tmp/batchgen-$(basename "$JOB" .yaml).lock}

exec 9>"$LOCK"
if ! flock --nonblock 9; then
    echo "[cron] $(date -Is) previous run of $JOB still going; skipping this tick"
    exit 0
fi
echo "[cron] $(date -Is) batchgen run $JOB"
# The lock is held by fd 9, which batchgen inherits: it is released only when batchgen exits.
"${BATCHGEN[@]}" run "$JOB" "$@"
rc=$?
case $rc in
    0) echo "[cron] $(date -Is) done (see _SUCCESS.json in the output for the whole job)" ;;
    75) echo "[cron] $(date -Is) interrupted after committing; the next tick resumes" ;;
    *) echo "[cron] $(date -Is) failed (exit $rc); the next tick tries again" ;;
esac
exit $rc
