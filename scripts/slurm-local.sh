#!/usr/bin/env bash
# Install and start a single-node SLURM on this machine (Debian's slurm-wlm: slurmctld + slurmd
# + munge), for `emarray run --scheduler slurm` tests and for trying SLURM out on a laptop.
#
#   bash scripts/slurm-local.sh          # install (as root, via apt-get) if needed, then start
#   bash scripts/slurm-local.sh stop     # stop the daemons
#   bash scripts/slurm-local.sh status   # sinfo
#
# Idempotent: when the controller already answers and the node is up, it does nothing. The
# node is this host with the CPUs and memory `slurmd -C` finds; one partition, `debug`. Jobs run
# as the submitting user; no cgroups, no accounting (proctrack/linuxproc, task/none), so it
# also runs inside a container. Do not use this configuration on a shared machine.
set -euo pipefail

CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
SPOOL=/var/spool/emarray-slurm
LOGS=/var/log/emarray-slurm
NODE=$(hostname -s)

say() { echo "slurm-local: $*" >&2; }

need_root() {
  if [ "$(id -u)" != 0 ]; then
    say "must run as root (it installs packages and starts daemons); try: sudo bash $0"
    exit 2
  fi
}

node_state() { sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n1 || true; }

running() {
  command -v sinfo >/dev/null 2>&1 && scontrol ping 2>/dev/null | grep -q UP \
    && case "$(node_state)" in idle*|mix*|alloc*|completing*) true ;; *) false ;; esac
}

install() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
      && command -v munged >/dev/null && command -v sbatch >/dev/null; then
    return
  fi
  say "installing slurm-wlm and munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends slurm-wlm munge >/dev/null \
    || { apt-get update >/dev/null && apt-get install -y --no-install-recommends slurm-wlm munge >/dev/null; }
}

start_munge() {
  if pgrep -x munged >/dev/null; then return; fi
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
  chmod 0700 /etc/munge /var/lib/munge /var/log/munge
  chmod 0755 /run/munge
  chmod 0400 /etc/munge/munge.key
  runuser -u munge -- /usr/sbin/munged
}

write_conf() {
  mkdir -p "$CONF_DIR" "$SPOOL/ctld" "$SPOOL/d" "$LOGS"
  # this node's CPUs, sockets, cores, threads and memory as slurmd sees them
  local hw
  hw=$(slurmd -C | head -n1 | sed -e 's/^NodeName=[^ ]* //' -e 's/ *UpTime=.*//')
  local mem
  mem=$(echo "$hw" | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  # leave a quarter of the memory to the system
  hw=$(echo "$hw" | sed "s/RealMemory=[0-9]*/RealMemory=$((mem * 3 / 4))/")
  cat > "$CONF" <<EOF
# written by emarray's scripts/slurm-local.sh: a single-node test cluster
ClusterName=emarray-local
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldPidFile=/run/emarray-slurmctld.pid
SlurmdPidFile=/run/emarray-slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SchedulerType=sched/backfill
KillWait=5
InactiveLimit=0
MinJobAge=60
NodeName=$NODE $hw State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

stop() {
  pkill -x slurmd 2>/dev/null || true
  pkill -x slurmctld 2>/dev/null || true
  for _ in $(seq 50); do
    pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null || return 0
    sleep 0.2
  done
}

start() {
  need_root
  install
  start_munge
  stop
  write_conf
  slurmctld
  slurmd
  for _ in $(seq 150); do
    if scontrol ping 2>/dev/null | grep -q UP; then
      case "$(node_state)" in
        idle*|mix*|alloc*) say "up: node $NODE ($(sinfo -h -n "$NODE" -o '%c CPUs, %m MB')), partition debug"; return 0 ;;
        down*|drain*) scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true ;;
      esac
    fi
    sleep 0.2
  done
  say "SLURM did not come up in 30 s; see $LOGS/slurmctld.log and $LOGS/slurmd.log"
  tail -n 5 "$LOGS"/*.log >&2 || true
  exit 1
}

case "${1:-start}" in
  start) if running; then say "already up: node $NODE, partition debug"; else start; fi ;;
  restart) start ;;
  stop) need_root; stop; say "stopped" ;;
  status) sinfo ;;
  *) say "usage: $0 [start|restart|stop|status]"; exit 2 ;;
esac
