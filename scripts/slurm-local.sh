#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for tests and trying out `snakemake --profile slurm`.
#   sudo bash scripts/slurm-local.sh up     # munged, slurmctld, slurmd as daemons (no systemd); partition "debug"
#   sudo bash scripts/slurm-local.sh down   # cancel every job, stop the daemons
# Needs root and Debian's slurm-wlm + munge. It owns /etc/slurm/slurm.conf and /etc/slurm/gres.conf while it runs
# (the Slurm config must live there: the executor plugin's job step does not pass SLURM_CONF on) and puts its
# state and logs in $KALBENCH_SLURM_STATE (default /tmp/kalbench-slurm). The node has two fake GPUs (gres "gpu"
# backed by character devices that are /dev/null), so GPU requests (--gpus=1) can be scheduled and checked without a GPU.
set -euo pipefail

STATE=${KALBENCH_SLURM_STATE:-/tmp/kalbench-slurm}
CONF=/etc/slurm/slurm.conf
GRES=/etc/slurm/gres.conf
MUNGE_PID=/run/munge/munged.pid

alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop() {  # stop the daemon whose pid file is $1, wait up to 10 s for it to exit
    local pidfile=$1 pid
    alive "$pidfile" || return 0
    pid=$(cat "$pidfile")
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
}

up() {
    [[ $(id -u) == 0 ]] || { echo "slurm-local.sh: needs root" >&2; exit 1; }
    for bin in munged slurmctld slurmd sbatch; do
        command -v "$bin" >/dev/null || { echo "slurm-local.sh: $bin not found (apt-get install slurm-wlm munge)" >&2; exit 1; }
    done
    if alive "$STATE/slurmctld.pid" && alive "$STATE/slurmd.pid"; then
        echo "slurm-local.sh: already up"
        return 0
    fi
    mkdir -p "$STATE/ctld" "$STATE/d" /etc/slurm
    local host node
    host=$(hostname)
    node=$(slurmd -C | head -1)   # NodeName=<host> CPUs=... RealMemory=...
    for i in 0 1; do   # fake GPU devices: Slurm wants character devices; these are /dev/null's twins
        [[ -c "$STATE/gpu$i" ]] || { rm -f "$STATE/gpu$i"; mknod "$STATE/gpu$i" c 1 3; }
    done
    cat > "$CONF" <<EOF
# Written by kalbench scripts/slurm-local.sh: a one-node test cluster.
ClusterName=kalbench
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
DefMemPerCPU=1024
MinJobAge=600
ReturnToService=2
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
GresTypes=gpu
$node Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    echo "Name=gpu File=$STATE/gpu[0-1]" > "$GRES"

    if ! alive "$MUNGE_PID"; then
        mkdir -p /run/munge && chown munge:munge /run/munge
        runuser -u munge -- munged
    fi
    slurmctld   # both daemonise themselves; -c: start without a saved state (no jobs from an earlier cluster)
    slurmd -c
    for _ in $(seq 100); do   # up when the node accepts jobs
        if sinfo -h -N -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
            echo "slurm-local.sh: up (partition debug, node $host); state and logs in $STATE"
            return 0
        fi
        sleep 0.2
    done
    echo "slurm-local.sh: the node did not come up; see $STATE/slurmctld.log and $STATE/slurmd.log" >&2
    exit 1
}

down() {
    if alive "$STATE/slurmctld.pid"; then
        scancel --full --quiet --partition debug 2>/dev/null || true
        # wait up to 10 s for the jobs to go
        for _ in $(seq 50); do [[ -z $(squeue -h -o %i 2>/dev/null) ]] && break; sleep 0.2; done
    fi
    stop "$STATE/slurmd.pid"
    stop "$STATE/slurmctld.pid"
    stop "$MUNGE_PID"
    echo "slurm-local.sh: down"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
