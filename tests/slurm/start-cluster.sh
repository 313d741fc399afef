#!/usr/bin/env bash
# A real single-node SLURM cluster for regflow's tests (Debian 12, no systemd, run as root).
#
#   munged → mariadbd (private datadir, 127.0.0.1:3307) → slurmdbd → slurmctld → slurmd
#
# Installs the Debian packages when missing, writes /etc/slurm/{slurm,slurmdbd}.conf, starts
# each daemon unless it already runs (pid files under $RUN), creates the accounting account
# and waits until the node is idle. Partition: debug; account: local. Idempotent.
set -euo pipefail

RUN=/run/regflow-slurm
STATE=/var/lib/regflow-slurm
LOGS=/var/log/regflow-slurm
CONF=/etc/slurm
CLUSTER=regflow
PARTITION=debug
ACCOUNT=local
DB_PORT=3307
TAG="# written by regflow tests/slurm/start-cluster.sh"

say() { echo "[slurm] $*"; }
fail() { echo "[slurm] ERROR: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "run as root"

running() {  # running PIDFILE NAME: the pid file names a live process called NAME
  [ -s "$1" ] && [ "$(cat "/proc/$(cat "$1")/comm" 2>/dev/null)" = "$2" ]
}
until_ok() {  # until_ok SECONDS WHAT COMMAND...: retry COMMAND until it succeeds
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || fail "gave up waiting for $what"
    sleep 0.5
  done
}

packages=(slurm-wlm munge slurmdbd mariadb-server)
absent=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || absent+=("$package")
done
if [ ${#absent[@]} -gt 0 ]; then
  say "installing ${absent[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${absent[@]}" >/dev/null
fi

mkdir -p "$RUN/munge" "$RUN/mysql" "$STATE/ctld" "$STATE/d" "$LOGS" "$CONF"
mkdir -p "$LOGS/munge"
chown munge:munge "$RUN/munge" "$LOGS/munge"
chown mysql:mysql "$RUN/mysql"

host=$(hostname -s)
node=$(slurmd -C | head -1 | grep -oE '(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore|RealMemory)=[0-9]+' | tr '\n' ' ')
[ -n "$node" ] || fail "slurmd -C did not describe this node"

cat > "$CONF/slurm.conf" <<CONF
$TAG
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
CommunicationParameters=NoInAddrAny
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=3600
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
NodeName=$host NodeAddr=127.0.0.1 $node State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
chmod 644 "$CONF/slurm.conf"

cat > "$CONF/slurmdbd.conf" <<CONF
$TAG
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
PidFile=$RUN/slurmdbd.pid
LogFile=$LOGS/slurmdbd.log
CONF
chmod 600 "$CONF/slurmdbd.conf"

# munge: authentication between the daemons and the clients.
munge_works() { munge -n </dev/null | unmunge; }
if ! running "$RUN/munge/munged.pid" munged && ! munge_works >/dev/null 2>&1; then
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
  fi
  mkdir -p /run/munge && chown munge:munge /run/munge
  runuser -u munge -- /usr/sbin/munged --pid-file="$RUN/munge/munged.pid" --log-file="$LOGS/munge/munged.log"
  until_ok 20 munged munge_works
fi

# MariaDB, private to this cluster: the accounting database behind slurmdbd and sacct.
socket="$RUN/mysql/mysqld.sock"
sql() { mariadb --no-defaults --socket="$socket" -uroot -e "$1"; }
if ! running "$RUN/mysql/mysqld.pid" mariadbd; then
  if [ ! -d "$STATE/mysql/mysql" ]; then
    mariadb-install-db --no-defaults --user=mysql --datadir="$STATE/mysql" >"$LOGS/mariadb-install.log" 2>&1 \
      || fail "mariadb-install-db failed (see $LOGS/mariadb-install.log)"
  fi
  setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$STATE/mysql" --socket="$socket" \
    --pid-file="$RUN/mysql/mysqld.pid" --port=$DB_PORT --bind-address=127.0.0.1 \
    --innodb-buffer-pool-size=64M --log-error="$LOGS/mariadb.log" </dev/null >/dev/null 2>&1 &
  until_ok 60 mariadbd sql "SELECT 1"
fi
sql "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
     CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
     GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
     GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
     FLUSH PRIVILEGES;"

if ! running "$RUN/slurmdbd.pid" slurmdbd; then
  /usr/sbin/slurmdbd
  until_ok 60 slurmdbd sacctmgr -n show cluster
fi
if ! running "$RUN/slurmctld.pid" slurmctld; then
  /usr/sbin/slurmctld
  until_ok 30 slurmctld scontrol ping
fi
if ! running "$RUN/slurmd.pid" slurmd; then
  /usr/sbin/slurmd
  until_ok 10 slurmd test -s "$RUN/slurmd.pid"
fi

# Accounting: slurmctld registers the cluster; root gets an account to charge jobs to.
until_ok 30 "cluster registration" bash -c "sacctmgr -n -P show cluster format=cluster | grep -qx $CLUSTER"
sacctmgr -n -P show account "$ACCOUNT" format=account | grep -qx "$ACCOUNT" \
  || sacctmgr -i add account "$ACCOUNT" Cluster=$CLUSTER Description=regflow-tests Organization=regflow >/dev/null
sacctmgr -n -P show assoc user=root account="$ACCOUNT" format=user | grep -qx root \
  || sacctmgr -i add user root Account="$ACCOUNT" DefaultAccount="$ACCOUNT" >/dev/null

node_idle() {
  local state
  state=$(sinfo -h -n "$host" -o %T | head -1)
  case "$state" in
    idle | mixed | allocated) return 0 ;;
    down* | drain*) scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true ;;
  esac
  return 1
}
until_ok 90 "node $host to be idle" node_idle
sinfo
say "cluster $CLUSTER up: partition $PARTITION, account $ACCOUNT"
