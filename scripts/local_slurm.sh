#!/usr/bin/env bash
# A real Slurm cluster on this one machine, for the test suite and for trying the sbatch templates:
# munge, slurmctld, and two slurmd daemons emulating nodes n1 and n2 (Debian's Slurm supports several
# slurmd per host). Needs root and apt (Debian/Ubuntu). Idempotent: a running cluster is left alone.
#
#   scripts/local_slurm.sh          install (first time, ~25 s) and start; prints the state directory
#   scripts/local_slurm.sh stop     stop the daemons
#
# State, logs and slurm.conf live in $OSL_SLURM_DIR (default /tmp/osl-slurm). Jobs see two nodes with
# $OSL_SLURM_CPUS CPUs each (default: this machine's count) sharing this host's filesystem.
set -euo pipefail
dir=${OSL_SLURM_DIR:-/tmp/osl-slurm}
cpus=${OSL_SLURM_CPUS:-$(nproc)}

if [ "${1:-}" = stop ]; then
  pkill -x slurmd 2>/dev/null || true
  pkill -x slurmctld 2>/dev/null || true
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "local_slurm: needs root (apt-get, daemons)" >&2
  exit 3
fi
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  command -v apt-get >/dev/null || { echo "local_slurm: no apt-get on this machine" >&2; exit 3; }
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi
host=$(hostname -s)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))
mkdir -p "$dir"/{state,spool/n1,spool/n2,log}
for n in n1 n2; do
  grep -qE "^127\.0\.0\.1[[:space:]].*\b$n\b" /etc/hosts || echo "127.0.0.1 $n" >> /etc/hosts
done
# cred_expire: a requeued job may start again after this many seconds (Slurm's default: 120);
# sched_interval: how often pending jobs are tried (default 60 s: a released requeued job waits for it);
# preemption as clusters set it up: a job of partition urgent takes the nodes of debug jobs, which get
# SIGTERM, GraceTime seconds to checkpoint, and are requeued
conf=$(cat <<EOF
ClusterName=osl
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
EnforcePartLimits=ALL
SlurmdParameters=config_overrides
ReturnToService=2
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd-%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
SchedulerParameters=batch_sched_delay=0,sched_interval=2
MinJobAge=600
KillWait=10
NodeName=n[1-2] NodeHostname=$host NodeAddr=127.0.0.1 Port=[17001-17002] CPUs=$cpus RealMemory=$mem State=UNKNOWN
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=60
PartitionName=urgent Nodes=ALL MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
AuthInfo=cred_expire=15
EOF
)
if [ "$conf" = "$(cat "$dir/slurm.conf" 2>/dev/null)" ] && scontrol ping 2>/dev/null | grep -q UP \
  && [ "$(sinfo -h -N -o %t 2>/dev/null | grep -cE "idle|mix|alloc")" -ge 2 ]; then
  echo "$dir"  # already running with this configuration
  exit 0
fi
echo "$conf" > "$dir/slurm.conf"
mkdir -p /etc/slurm
ln -sf "$dir/slurm.conf" /etc/slurm/slurm.conf
mkdir -p /run/munge && chown munge:munge /run/munge
pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
pkill -x slurmd 2>/dev/null || true
pkill -x slurmctld 2>/dev/null || true
sleep 1
slurmctld -c
for n in n1 n2; do slurmd -N "$n"; done
for _ in $(seq 60); do
  if [ "$(sinfo -h -N -o '%N %t' 2>/dev/null | grep -cE 'idle|mix')" -ge 2 ]; then
    echo "$dir"
    exit 0
  fi
  sleep 0.5
done
echo "local_slurm: the nodes did not come up; see $dir/log" >&2
sinfo -N >&2 || true
exit 1
