#!/usr/bin/env bash
# slurm/testcluster/start.sh [--if-possible] - a real SLURM cluster on this one machine,
# for the tests and for trying the launcher: munge, MariaDB + slurmdbd (so sacct and job
# states work), slurmctld, and two slurmd daemons as nodes n1 and n2 (all on 127.0.0.1).
# Debian (slurm-wlm 22.05), as root, no systemd needed. Idempotent: installs what is
# missing, (re)writes the config, starts what is not running, waits until every node is
# idle. Its last line on stdout is the export clients need:
#     eval "$(slurm/testcluster/start.sh)"      # sets SLURM_CONF
# --if-possible: where it cannot run (not root, no apt-get, packages unreachable) print
# why on stderr and exit 0 without the export, so the SLURM tests skip. Under CI=true
# that is an error instead: CI must run them.
# slurm/testcluster/stop.sh stops what this started.
# Knobs (env):
#   SLURMTEST_BASE        /tmp/slurmtest   where config, state, logs, pids live
#   SLURMTEST_NODES       2                number of fake nodes
#   SLURMTEST_CPUS        $(nproc)         CPUs each fake node claims (oversubscribed)
#   SLURMTEST_MEM         4000             MB each fake node claims
#   SLURMTEST_ACCOUNTING  1                0 = no mariadb/slurmdbd (sacct will not work)
#   SLURMTEST_RESET       0                1 = wipe job state (and accounting db) first
set -euo pipefail
IF_POSSIBLE=0
[[ ${1:-} == --if-possible ]] && IF_POSSIBLE=1
cannot() {   # cannot REASON: skip (or fail under CI) when the cluster cannot be had
  if [[ $IF_POSSIBLE == 1 && ${CI:-} != true ]]; then
    echo "[start] no SLURM test cluster: $1 (the slurm tests will be skipped)" >&2; exit 0
  fi
  echo "[start] cannot start the SLURM test cluster: $1" >&2; exit 1
}
[[ $(id -u) == 0 ]] || cannot "not root"
command -v apt-get >/dev/null || command -v slurmctld >/dev/null || cannot "no apt-get to install SLURM"
exec 3>&1 1>&2   # logs go to stderr; only the final export reaches stdout
BASE=${SLURMTEST_BASE:-/tmp/slurmtest}
NNODES=${SLURMTEST_NODES:-2}
# nproc would count OMP_NUM_THREADS, which a launcher sets to one job's CPUs, as the machine's
CPUS=${SLURMTEST_CPUS:-$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)}
MEM=${SLURMTEST_MEM:-4000}
ACCT=${SLURMTEST_ACCOUNTING:-1}
RESET=${SLURMTEST_RESET:-0}
export SLURM_CONF=$BASE/etc/slurm.conf
RUN=$BASE/run
log() { echo "[start $(date +%T)] $*"; }
alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
# a daemon must not inherit this script's output: whoever reads it, $(start.sh) or a
# test capturing it, would wait for the end of a pipe that the daemon holds open
daemon() { "$@" </dev/null >>"$BASE/log/daemons.out" 2>&1 3>&-; }

# ---- 1. packages -------------------------------------------------------------
pkgs=(slurmctld slurmd slurm-client munge)
[[ $ACCT == 1 ]] && pkgs+=(slurmdbd mariadb-server)
missing_pkgs=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing_pkgs+=("$p")
done
if ((${#missing_pkgs[@]})); then
  log "apt-get install ${missing_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends "${missing_pkgs[@]}" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1
         apt-get install -y -q --no-install-recommends "${missing_pkgs[@]}" >/dev/null; } \
    || cannot "apt-get could not install ${missing_pkgs[*]}"
fi
mkdir -p "$BASE"/{etc,state,spool,log,run}

# ---- 2. name resolution: node names (torch MASTER_ADDR) and own hostname (gloo)
NODES=$(seq -f "n%g" 1 "$NNODES" | tr '\n' ' ')
unresolved=""
for h in $NODES "$(hostname)"; do getent hosts "$h" >/dev/null || unresolved+=" $h"; done
if [[ -n $unresolved ]]; then
  log "adding to /etc/hosts: 127.0.0.1$unresolved"
  echo "127.0.0.1$unresolved # slurmtest" >> /etc/hosts
fi

# ---- 3. munge ------------------------------------------------------------------
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating munge key"
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
  fi
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge; chmod 755 /run/munge
  log "starting munged"
  daemon runuser -u munge -- /usr/sbin/munged || daemon /usr/sbin/munged --force
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  cp /run/munge/munged.pid "$RUN/munged.pid"   # stop.sh stops only what we started
fi

# ---- 4. stop our slurm daemons if asked to reset -------------------------------
stop_pid() { alive "$1" && { log "stopping $(basename "$1" .pid)"; kill "$(cat "$1")";
             for _ in $(seq 100); do alive "$1" || break; sleep 0.1; done; }; rm -f "$1"; }
if [[ $RESET == 1 ]]; then
  for p in "$RUN"/slurmd-*.pid "$RUN/slurmctld.pid" "$RUN/slurmdbd.pid" "$BASE/dbrun/mariadb.pid"; do
    stop_pid "$p"; done
  rm -rf "${BASE:?}"/state/* "${BASE:?}"/spool/* "${BASE:?}"/db
fi

# ---- 5. slurm.conf (clients, incl. sacctmgr, need it before slurmdbd is polled)
if [[ $ACCT == 1 ]]; then
  ACCT_CONF="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819"
else
  ACCT_CONF="AccountingStorageType=accounting_storage/none"
fi
cat > "$SLURM_CONF.new" <<EOF
ClusterName=testcluster
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
AuthType=auth/munge
# a requeued job may restart only cred_expire s later (default 120, minimum 5)
AuthInfo=cred_expire=5
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool/%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
$ACCT_CONF
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=600
KillWait=5
Waittime=0
NodeName=n[1-$NNODES] NodeHostname=$(hostname -s) NodeAddr=127.0.0.1 Port=17001-$((17000+NNODES)) CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
if cmp -s "$SLURM_CONF.new" "$SLURM_CONF"; then
  rm "$SLURM_CONF.new"
else                                     # config changed: restart slurmctld + slurmd
  mv "$SLURM_CONF.new" "$SLURM_CONF"
  for p in "$RUN"/slurmd-*.pid "$RUN/slurmctld.pid"; do stop_pid "$p"; done
fi

# ---- 6. accounting: mariadb + slurmdbd (optional) ------------------------------
if [[ $ACCT == 1 ]]; then
  mkdir -p "$BASE/dbrun"; chown mysql:mysql "$BASE/dbrun"
  if [[ ! -d $BASE/db/mysql ]]; then
    log "initialising mariadb datadir"
    mkdir -p "$BASE/db"; chown mysql:mysql "$BASE/db"
    mariadb-install-db --user=mysql --datadir="$BASE/db" --skip-test-db \
      --auth-root-authentication-method=socket >"$BASE/log/mariadb-install.log" 2>&1
  fi
  if ! alive "$BASE/dbrun/mariadb.pid"; then
    log "starting mariadbd (127.0.0.1:16033)"
    setsid mariadbd --no-defaults --user=mysql --datadir="$BASE/db" \
      --socket="$BASE/dbrun/mysql.sock" --pid-file="$BASE/dbrun/mariadb.pid" \
      --bind-address=127.0.0.1 --port=16033 --log-error="$BASE/log/mariadb.log" \
      --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900 </dev/null >>"$BASE/log/daemons.out" 2>&1 3>&- &
    for _ in $(seq 100); do
      timeout 5 mariadb -S "$BASE/dbrun/mysql.sock" -e 'select 1' >/dev/null 2>&1 && break; sleep 0.2; done
    mariadb -S "$BASE/dbrun/mysql.sock" -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1'
      IDENTIFIED BY 'slurmtest'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
  fi
  cat > "$BASE/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$BASE/log/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=16033
StorageUser=slurm
StoragePass=slurmtest
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$BASE/etc/slurmdbd.conf"   # slurmdbd refuses a world-readable config
  if ! alive "$RUN/slurmdbd.pid"; then
    log "starting slurmdbd"
    daemon slurmdbd                      # reads slurmdbd.conf next to $SLURM_CONF
    for _ in $(seq 50); do timeout 5 sacctmgr -n show cluster >/dev/null 2>&1 && break; sleep 0.2; done
  fi
fi

# ---- 7. slurmctld + one slurmd per node ----------------------------------------
if ! alive "$RUN/slurmctld.pid"; then
  log "starting slurmctld"
  if [[ $RESET == 1 ]]; then daemon slurmctld -c -i; else daemon slurmctld -i; fi
fi
for n in $NODES; do
  mkdir -p "$BASE/spool/$n"
  alive "$RUN/slurmd-$n.pid" || { log "starting slurmd -N $n"; daemon slurmd -N "$n"; }
done

# ---- 8. wait until all nodes are idle ------------------------------------------
states=""
for i in $(seq 120); do
  states=$(timeout 5 sinfo -h -N -o '%T' 2>/dev/null | sort -u | tr '\n' ' ')
  if [[ $states == "idle " ]]; then
    log "cluster up: $NNODES node(s) idle"
    echo "export SLURM_CONF=$SLURM_CONF" >&3; exit 0
  fi
  # a node left down/drained by an earlier run: resume it
  (( i % 10 == 0 )) && timeout 5 scontrol update nodename="n[1-$NNODES]" state=resume 2>/dev/null || true
  sleep 0.5
done
log "timed out waiting for idle nodes; sinfo states: $states"
sinfo -N -l || true; tail -n 20 "$BASE"/log/*.log
exit 1
