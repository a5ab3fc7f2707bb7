#!/usr/bin/env bash
# Install and start a SLURM test cluster on this one machine (Debian's slurm-wlm: slurmctld, one
# slurmd per compute node, munge), for `emarray run --scheduler slurm` tests and for trying SLURM
# out on a laptop.
#
#   bash scripts/slurm-local.sh [start] [--nodes N]  install (as root, via apt-get) if needed, then
#                                                    start N compute nodes node1..nodeN (default 3)
#   bash scripts/slurm-local.sh restart [--nodes N]  stop everything, start again from a clean state
#   bash scripts/slurm-local.sh stop                 cancel the jobs, stop the daemons
#   bash scripts/slurm-local.sh status               sinfo, one line per node
#   bash scripts/slurm-local.sh lose NODE            a node lost: SIGKILL its slurmd and every
#                                                    process of its jobs (nothing is told first)
#   bash scripts/slurm-local.sh revive NODE          start that node's slurmd again
#
# Several nodes on one machine: SLURM's multiple-slurmd mode. Debian builds slurm-wlm with
# --enable-multiple-slurmd (`scontrol show config` says MULTIPLE_SLURMD = Yes), so each node is a
# `slurmd -N nodeK` listening on its own port, with its own spool folder, pid file and log; jobs
# on nodeK see SLURMD_NODENAME=nodeK. Network namespaces (one veth address per slurmd) would give
# each node its own IP too, but need a bridge, routes and a scheduler address the namespaces can
# reach; nothing emarray does depends on the address, and a lost node looks the same to dask
# either way (its workers' connections drop), so the simpler mode is used. On a SLURM built
# without it, more than one node is refused by name (ask for --nodes 1).
#
# Idempotent: when the controller answers and the N nodes are up, it does nothing; otherwise it
# stops whatever runs, clears the controller's saved state and starts again. Each node has the CPUs
# and memory `slurmd -C` finds (so together they promise more than the machine has: a test
# cluster); one partition, `debug`. Jobs run as the submitting user; no cgroups, no accounting
# (proctrack/linuxproc, task/none), so it also runs inside a container. A node that stops
# answering is marked down after 30 s (SlurmdTimeout; real clusters wait minutes). Do not use this
# configuration on a shared machine.
set -euo pipefail

CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
SPOOL=/var/spool/emarray-slurm
LOGS=/var/log/emarray-slurm
HOST=$(hostname -s)
FIRST_PORT=6818

say() { echo "slurm-local: $*" >&2; }

need_root() {
  if [ "$(id -u)" != 0 ]; then
    say "must run as root (it installs packages and starts daemons); try: sudo bash $0"
    exit 2
  fi
}

# the controller answers (captured first: grep -q on a pipe can SIGPIPE scontrol, and pipefail)
ctld_up() { local out; out=$(scontrol ping 2>/dev/null || true); [[ $out == *UP* ]]; }

# the node's slurmd runs (a killed one may linger as a zombie while nothing reaps it: not alive)
slurmd_alive() {
  local pid stat
  pid=$(cat "/run/emarray-slurmd-$1.pid" 2>/dev/null) || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = slurmd ] || return 1
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  [[ ${stat##*) } != Z* ]]  # the state follows the ") " that ends the command's name
}

nodelist() { if [ "$1" = 1 ]; then echo node1; else echo "node[1-$1]"; fi; }

node_names() { local k; for k in $(seq "$1"); do echo "node$k"; done; }

# "NAME STATE" per node; a state ending in * is a node that does not answer
node_states() { sinfo -h -N -o '%N %T' 2>/dev/null | sort -u || true; }

# the N nodes node1..nodeN, and only they, are up and answering
running() {
  command -v sinfo >/dev/null 2>&1 && ctld_up || return 1
  local states want
  states=$(node_states)
  want=$(node_names "$1")
  [ "$(echo "$states" | cut -d' ' -f1)" = "$(echo "$want" | sort)" ] || return 1
  local node  # each node's slurmd is alive (the controller notices a dead one only later)
  for node in $want; do slurmd_alive "$node" || return 1; done
  ! echo "$states" | cut -d' ' -f2 | grep -v -E '^(idle|mixed|allocated|completing)$' >/dev/null
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
  local n=$1 node k
  mkdir -p "$CONF_DIR" "$SPOOL/ctld" "$LOGS"
  # this machine's CPUs, sockets, cores, threads and memory as slurmd sees them
  local hw
  hw=$(slurmd -C | head -n1 | sed -e 's/^NodeName=[^ ]* //' -e 's/ *UpTime=.*//')
  local mem
  mem=$(echo "$hw" | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  # leave a quarter of the memory to the system
  hw=$(echo "$hw" | sed "s/RealMemory=[0-9]*/RealMemory=$((mem * 3 / 4))/")
  cat > "$CONF" <<EOF
# written by emarray's scripts/slurm-local.sh: a test cluster of $n node(s) on one machine
# (SLURM's multiple-slurmd mode: one slurmd per node, each on its own port)
ClusterName=emarray-local
SlurmctldHost=$HOST
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
SlurmdSpoolDir=$SPOOL/%n
SlurmctldPidFile=/run/emarray-slurmctld.pid
SlurmdPidFile=/run/emarray-slurmd-%n.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd-%n.log
SchedulerType=sched/backfill
SlurmdTimeout=30
KillWait=5
InactiveLimit=0
MinJobAge=60
EOF
  for k in $(seq "$n"); do
    node=node$k
    mkdir -p "$SPOOL/$node"
    echo "NodeName=$node NodeHostname=$HOST Port=$((FIRST_PORT + k - 1)) $hw State=UNKNOWN" >> "$CONF"
  done
  echo "PartitionName=debug Nodes=$(nodelist "$n") Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO" >> "$CONF"
}

stop() {
  if command -v scontrol >/dev/null && ctld_up; then
    # cancel the jobs while the nodes still answer, so that their processes end too
    local jobs
    jobs=$(squeue -h -o %i 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null || true
      for _ in $(seq 50); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.2; done
    fi
  fi
  pkill -x slurmd 2>/dev/null || true
  pkill -x slurmctld 2>/dev/null || true
  for _ in $(seq 50); do
    pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null || return 0
    sleep 0.2
  done
}

# wait up to 30 s for the given nodes to answer and take jobs; a node SLURM marked down is resumed
wait_up() {
  local node state
  for _ in $(seq 150); do
    if ctld_up; then
      local all=1
      for node in "$@"; do
        state=$(sinfo -h -n "$node" -o %T 2>/dev/null | head -n1 || true)
        case "$state" in
          *'*') all=0 ;;
          idle|mixed|allocated) ;;
          down*|drain*) all=0; scontrol update NodeName="$node" State=RESUME 2>/dev/null || true ;;
          *) all=0 ;;
        esac
      done
      [ "$all" = 1 ] && return 0
    fi
    sleep 0.2
  done
  say "SLURM did not come up in 30 s; see $LOGS/slurmctld.log and $LOGS/slurmd-*.log"
  tail -n 5 "$LOGS"/*.log >&2 || true
  exit 1
}

start() {
  local n=$1 node
  need_root
  install
  start_munge
  stop
  write_conf "$n"
  rm -rf "${SPOOL:?}/ctld"/*  # jobs and nodes of an earlier cluster are gone: forget them
  slurmctld
  if [ "$n" -gt 1 ]; then
    for _ in $(seq 50); do ctld_up && break; sleep 0.2; done
    local config
    config=$(scontrol show config 2>/dev/null || true)  # (grep -q on a pipe: SIGPIPE, pipefail)
    if ! echo "$config" | grep -q -E '^MULTIPLE_SLURMD *= *Yes'; then
      say "this SLURM was built without --enable-multiple-slurmd, so one machine runs one node:" \
          "use --nodes 1"
      stop
      exit 2
    fi
  fi
  for node in $(node_names "$n"); do slurmd -N "$node"; done
  # shellcheck disable=SC2046
  wait_up $(node_names "$n")
  say "up: $n node(s) $(nodelist "$n"), $(sinfo -h -n node1 -o '%c CPUs, %m MB') each, partition debug"
}

configured() { grep -q "^NodeName=$1 " "$CONF" 2>/dev/null; }

# a node lost without warning: its slurmd and every process of its jobs SIGKILLed
lose() {
  local node=$1 pidfile p
  need_root
  configured "$node" || { say "no node $node in $CONF"; exit 2; }
  local jobs
  jobs=$(squeue -h -w "$node" -o %i 2>/dev/null || true)
  pidfile=/run/emarray-slurmd-$node.pid
  [ -s "$pidfile" ] && kill -KILL "$(cat "$pidfile")" 2>/dev/null || true
  local pattern env cmd
  pattern=$(echo "$jobs" | tr '\n' '|'); pattern=${pattern%|}
  for p in /proc/[0-9]*; do
    # the job's processes carry SLURMD_NODENAME; its slurmstepd is named after the job (read
    # first, then matched: grep -q on a pipe may SIGPIPE the reader, which pipefail counts)
    env=$(tr '\0' '\n' 2>/dev/null < "$p/environ" || true)
    cmd=$(tr '\0' ' ' 2>/dev/null < "$p/cmdline" || true)
    if [[ $'\n'$env$'\n' == *$'\n'"SLURMD_NODENAME=$node"$'\n'* ]] \
        || { [ -n "$pattern" ] && [[ $cmd =~ ^slurmstepd:\ \[($pattern)\. ]]; }; then
      kill -KILL "${p#/proc/}" 2>/dev/null || true
    fi
  done
  say "lost $node (slurmd and the processes of job(s) $(echo ${jobs:-none}) killed)"
}

revive() {
  local node=$1
  need_root
  configured "$node" || { say "no node $node in $CONF"; exit 2; }
  slurmd_alive "$node" || slurmd -N "$node"
  wait_up "$node"
  say "$node is back"
}

what=start nodes=""
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) nodes=${2:-}; shift 2 || { say "--nodes needs a number"; exit 2; } ;;
    --nodes=*) nodes=${1#--nodes=}; shift ;;
    start|restart|stop|status) what=$1; shift ;;
    lose|revive) what=$1; arg=${2:-}; shift 2 || { say "$1 needs a node name (node1...)"; exit 2; } ;;
    *) say "unknown argument '$1'; usage: $0 [start|restart|stop|status] [--nodes N] | lose NODE | revive NODE"; exit 2 ;;
  esac
done
if [ -n "$nodes" ] && ! [[ "$nodes" =~ ^[1-9][0-9]?$ ]]; then
  say "--nodes must be a whole number from 1 to 99, got '$nodes'"
  exit 2
fi
nodes=${nodes:-3}

case "$what" in
  start) if running "$nodes"; then say "already up: $nodes node(s) $(nodelist "$nodes"), partition debug"
         else start "$nodes"; fi ;;
  restart) start "$nodes" ;;
  stop) need_root; stop; say "stopped" ;;
  status) sinfo -N -l ;;
  lose) lose "$arg" ;;
  revive) revive "$arg" ;;
esac
