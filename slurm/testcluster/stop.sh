#!/usr/bin/env bash
# slurm/testcluster/stop.sh [--purge] - stop what start.sh started, by recorded PID
# (never by name). --purge also deletes job state, spool, logs, the accounting
# database, the generated config and the /etc/hosts line start.sh added.
set -uo pipefail
BASE=${SLURMTEST_BASE:-/tmp/slurmtest}
export SLURM_CONF=$BASE/etc/slurm.conf
RUN=$BASE/run
log() { echo "[stop $(date +%T)] $*"; }
stop_pids() {  # stop_pids pidfile...: TERM all, wait up to 10 s, then KILL
  local f pid pids=()
  for f in "$@"; do
    [[ -s $f ]] || continue
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
      log "stopping $(basename "$f" .pid) (pid $pid)"; kill "$pid"; pids+=("$pid")
    fi
    rm -f "$f"
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  done
  return 0
}
# cancel jobs first so that no slurmstepd / job process outlives its slurmd
if [[ -s $RUN/slurmctld.pid ]] && kill -0 "$(cat "$RUN/slurmctld.pid")" 2>/dev/null \
   && [[ -n $(squeue -h -o %i 2>/dev/null) ]]; then
  log "cancelling jobs"; scancel --user=root 2>/dev/null
  for _ in $(seq 30); do [[ -z $(squeue -h -o %i 2>/dev/null) ]] && break; sleep 0.5; done
fi
stop_pids "$RUN"/slurmd-*.pid
stop_pids "$RUN/slurmctld.pid"
stop_pids "$RUN/slurmdbd.pid"
stop_pids "$BASE/dbrun/mariadb.pid"
stop_pids "$RUN/munged.pid"         # present only if start.sh started munged
if [[ ${1:-} == --purge ]]; then
  log "purging state, spool, logs, db, config; removing /etc/hosts line"
  rm -rf "${BASE:?}"/{state,spool,log,run,etc,db,dbrun}
  sed -i '/ # slurmtest$/d' /etc/hosts
fi
exit 0
