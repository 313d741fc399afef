#!/usr/bin/env bash
# Stop what tests/slurm/start-cluster.sh started (only processes named in its pid files).
set -uo pipefail
RUN=/run/regflow-slurm
stop() {  # stop PIDFILE NAME
  local pid
  [ -s "$1" ] || return 0
  pid=$(cat "$1")
  if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]; then
    kill -TERM "$pid"
    for _ in $(seq 60); do [ -d "/proc/$pid" ] || break; sleep 0.5; done
    [ -d "/proc/$pid" ] && kill -KILL "$pid"
    echo "[slurm] stopped $2"
  fi
  rm -f "$1"
}
if [ -s "$RUN/slurmctld.pid" ]; then
  jobs=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')
  [ -n "${jobs// /}" ] && scancel $jobs
fi
stop "$RUN/slurmd.pid" slurmd
stop "$RUN/slurmctld.pid" slurmctld
stop "$RUN/slurmdbd.pid" slurmdbd
stop "$RUN/mysql/mysqld.pid" mariadbd
stop "$RUN/munge/munged.pid" munged
# Remove the configuration start-cluster.sh wrote (only files carrying its tag): with a
# slurm.conf but no controller, every `scontrol` — which Snakemake's SLURM executor plugin
# runs when it is imported, i.e. at every `snakemake` start — waits ~10 s for a timeout.
TAG="# written by regflow tests/slurm/start-cluster.sh"
for conf in /etc/slurm/slurm.conf /etc/slurm/slurmdbd.conf; do
  if [ -f "$conf" ] && [ "$(head -1 "$conf")" = "$TAG" ]; then
    rm -f "$conf" && echo "[slurm] removed $conf"
  fi
done
