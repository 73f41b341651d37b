#!/usr/bin/env bash
# Start a one-node Slurm cluster (with accounting) on this machine, for the cluster tests and
# for trying `lfm-bench run EXP --launcher slurm` without a real cluster.
#
#   bash scripts/slurm-up.sh          # as root (or with sudo); safe to rerun
#
# Installs Debian's slurm-wlm, munge, slurmdbd and MariaDB (apt-get), writes
# /etc/slurm/slurm.conf and /etc/slurm/slurmdbd.conf for a single node named `hostname -s`
# with this machine's CPUs and memory, keeps all state, spool, logs and the MariaDB data under
# $LFM_SLURM_DIR (default /var/lib/lfm-slurm), starts munged, mariadbd, slurmdbd, slurmctld and
# slurmd, and waits until the node is idle. Daemons already running are left alone; a changed
# config restarts the Slurm daemons.
#
# Accounting (slurmdbd + MariaDB) is there because submitit polls job states with `sacct`.
# A requeued job normally waits the credential lifetime (120 s, plus a scheduling pass) before it
# may start again; AuthInfo=cred_expire sets that lifetime, here to $LFM_SLURM_CRED_EXPIRE seconds
# (default 5, Slurm's minimum), and the schedulers run every 1-2 s instead of 30-60 s, so a
# requeued task runs again after about 6-10 s instead of about 2.5 minutes. (Forcing an earlier
# start with `scontrol update JobId=.. StartTime=now` makes Slurm fail the job: "Job credential
# revoked".)
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "slurm-up: ERROR: needs root (or sudo) to install and start Slurm" >&2; exit 1; }
    exec sudo -E bash "$0" "$@"
fi

DIR=${LFM_SLURM_DIR:-/var/lib/lfm-slurm}
CRED_EXPIRE=${LFM_SLURM_CRED_EXPIRE:-5}
TIMEOUT=${LFM_SLURM_TIMEOUT:-180}
CLUSTER=lfm
NODE=$(hostname -s)
DB_PORT=${LFM_SLURM_DB_PORT:-3307}
DB_PASS=lfm-slurm-local
DB_SOCKET=$DIR/mysql/mysqld.sock
T0=$SECONDS

say() { echo "slurm-up: $*"; }
die() { echo "slurm-up: ERROR: $*" >&2; exit 1; }
# running NAME: the daemon NAME whose pid file lies in $DIR/run is alive.
running() {
    local pid
    pid=$(cat "$DIR/run/$1.pid" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "$1" ]
}
# wait_for SECONDS WHAT COMMAND...: run COMMAND until it succeeds, or fail naming WHAT and a log.
wait_for() {
    local limit=$1 what=$2; shift 2
    local end=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $end ] || die "$what did not come up within ${limit}s (logs: $DIR/log)"
        sleep 1
    done
}

# --- packages -----------------------------------------------------------------------------------
need=()
for pair in slurmctld:slurm-wlm slurmd:slurm-wlm sinfo:slurm-client munged:munge slurmdbd:slurmdbd \
            mariadbd:mariadb-server-core mariadb:mariadb-client-core; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]} (apt-get)"
    # In a container without init, keep the packages' postinst from starting their own daemons.
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
    fi
    apt-get update -q >/dev/null
    # mariadb-server-core, not mariadb-server: the latter's postinst bootstraps a system database
    # in /var/lib/mysql (10 of the 11 minutes the install took here); ours lives under $DIR.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        slurm-wlm slurm-client munge slurmdbd mariadb-server-core mariadb-client-core >/dev/null
    [ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
fi

mkdir -p "$DIR"/{log,run,ctld,slurmd,mysql} /etc/slurm

# --- munge --------------------------------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
fi
chown munge:munge /etc/munge/munge.key 2>/dev/null || true
chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "starting munged"
    if id munge >/dev/null 2>&1; then
        runuser -u munge -- munged --force
    else
        munged --force
    fi
    wait_for 30 munged sh -c 'munge -n | unmunge'
fi

# --- MariaDB for accounting ---------------------------------------------------------------------
sql() { mariadb --socket="$DB_SOCKET" -uroot "$@"; }
if [ ! -d "$DIR/mysql/data/mysql" ]; then
    say "initialising MariaDB in $DIR/mysql/data"
    rm -rf "$DIR/mysql/data"
    mariadb-install-db --user=root --datadir="$DIR/mysql/data" --skip-test-db --skip-name-resolve \
        --innodb-flush-log-at-trx-commit=0 --innodb-doublewrite=0 --innodb-log-file-size=8M \
        --auth-root-authentication-method=socket >"$DIR/log/mariadb-install.log" 2>&1 \
        || die "mariadb-install-db failed (see $DIR/log/mariadb-install.log)"
fi
if ! sql -e 'SELECT 1' >/dev/null 2>&1; then
    say "starting mariadbd"
    mariadbd --user=root --datadir="$DIR/mysql/data" --socket="$DB_SOCKET" \
        --bind-address=127.0.0.1 --port="$DB_PORT" --pid-file="$DIR/run/mariadbd.pid" \
        --log-error="$DIR/log/mariadbd.log" --innodb-buffer-pool-size=64M --skip-log-bin \
        >/dev/null 2>&1 &
    wait_for 120 mariadbd sql -e 'SELECT 1'
fi
sql -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
        CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
        FLUSH PRIVILEGES;"

# --- configs ------------------------------------------------------------------------------------
CPUS=$(nproc)
MEM_MB=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
REAL_MB=$((MEM_MB * 95 / 100))   # a bit below the total, so slurmd never finds less than configured

write_if_changed() {  # write_if_changed FILE MODE: stdin to FILE; exit status 0 when it changed
    local tmp; tmp=$(mktemp)
    cat >"$tmp"
    if [ -f "$1" ] && cmp -s "$tmp" "$1"; then rm -f "$tmp"; return 1; fi
    install -m "$2" "$tmp" "$1"; rm -f "$tmp"; return 0
}

dbd_changed=0
write_if_changed /etc/slurm/slurmdbd.conf 600 <<CONF && dbd_changed=1
# Written by scripts/slurm-up.sh (lfm): accounting for the one-node test cluster.
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
CONF

conf_changed=0
write_if_changed /etc/slurm/slurm.conf 644 <<CONF && conf_changed=1
# Written by scripts/slurm-up.sh (lfm): a one-node cluster for the cluster tests.
ClusterName=$CLUSTER
SlurmctldHost=$NODE
AuthType=auth/munge
# Lifetime of a job credential; also how long a requeued job waits before it may start again.
AuthInfo=cred_expire=$CRED_EXPIRE
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/slurmd
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# Test pending jobs often (defaults 30 s and 60 s): a requeued task starts as soon as it may.
SchedulerParameters=bf_interval=1,sched_interval=2
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/none
NodeName=$NODE CPUs=$CPUS RealMemory=$REAL_MB State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF

# --- daemons ------------------------------------------------------------------------------------
stop() {  # stop NAME: end the daemon started from here (by its pid file) and wait until it is gone
    if running "$1"; then
        say "restarting $1"
        kill "$(cat "$DIR/run/$1.pid")" || true
        wait_for 30 "$1 (stopping)" sh -c "! kill -0 $(cat "$DIR/run/$1.pid") 2>/dev/null"
    fi
}
[ $dbd_changed = 1 ] && stop slurmdbd
[ $conf_changed = 1 ] && { stop slurmd; stop slurmctld; }

if ! running slurmdbd; then
    say "starting slurmdbd"
    slurmdbd
    wait_for 60 slurmdbd sacctmgr -n list cluster
fi
if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
    stop slurmctld   # slurmctld registers with the new cluster on its next start
fi
if ! running slurmctld; then
    say "starting slurmctld"
    slurmctld
fi
wait_for 60 slurmctld scontrol ping
if ! running slurmd; then
    say "starting slurmd"
    slurmd
fi

node_state() { sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n1; }
end=$((SECONDS + TIMEOUT))
while :; do
    state=$(node_state)
    case $state in
        idle|mixed|allocated) break ;;
        *drain*|*down*|*fail*)
            # A node left DOWN/DRAINED by an earlier run (e.g. a changed memory size) is put back.
            scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    [ $SECONDS -lt $end ] || die "node $NODE is '${state:-not answering}' after ${TIMEOUT}s (logs: $DIR/log)"
    sleep 1
done
say "up: node $NODE ($CPUS CPUs, ${REAL_MB} MB) is $state, partition debug, accounting on; $((SECONDS - T0))s"
