#!/usr/bin/env bash
# Runs a command beside a real one-node Slurm cluster on localhost: munged, slurmctld and
# slurmd (Debian's slurm-wlm 22.05) started from a private folder with their own key, ports,
# state and logs, SLURM_CONF pointing sbatch/squeue/scancel at it. Every daemon it started is
# stopped when the command ends, whatever its exit status. Needs root (slurmd runs jobs as
# their user) and the packages slurmctld, slurmd, slurm-client and munge (.ci/run installs
# them). Without them, or if the daemons do not come up, the command runs as it is, and the
# Slurm tests say they were skipped (or fail, where TLAB_REQUIRE_SLURM=1, as in CI).
# Usage: tests/with_slurm.sh COMMAND [ARGS...]
set -euo pipefail
missing=()
for bin in munged slurmctld slurmd sbatch squeue scancel; do
    command -v "$bin" >/dev/null || [ -x "/usr/sbin/$bin" ] || missing+=("$bin")
done
if [ ${#missing[@]} -gt 0 ] || [ "$(id -u)" != 0 ]; then
    echo "note: no local Slurm (missing: ${missing[*]:-none}; uid $(id -u)); the Slurm tests skip. Install: apt-get install slurmctld slurmd slurm-client munge (as root)" >&2
    exec "$@"
fi
export PATH="/usr/sbin:$PATH"

dir="$(mktemp -d /tmp/tlab-slurm.XXXXXX)"
pids=()
stop() {
    # Jobs first (their steps belong to slurmd), then the daemons, then anything a job left.
    if [ -n "${SLURM_CONF:-}" ]; then
        scancel --full --user="$(id -un)" 2>/dev/null || true
        for _ in $(seq 1 50); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.2; done
    fi
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    pkill -9 -f "$dir/spool" 2>/dev/null || true
    if [ -n "${TLAB_SLURM_KEEP_LOGS:-}" ]; then echo "slurm logs kept in $dir" >&2; else rm -rf "$dir"; fi
}
trap stop EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
host="$(hostname -s)"
cpus="$(nproc)"
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))
mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
chmod 700 "$dir/munge"

# munge: a fresh key and a private socket, so an installed munge service is never touched.
dd if=/dev/urandom of="$dir/munge/key" bs=1024 count=1 status=none
chmod 400 "$dir/munge/key"
munged --key-file="$dir/munge/key" --socket="$dir/munge/socket" --pid-file="$dir/munge/pid" \
    --log-file="$dir/munge/log" --seed-file="$dir/munge/seed" --force
for _ in $(seq 1 50); do [ -f "$dir/munge/pid" ] && break; sleep 0.1; done
pids+=("$(cat "$dir/munge/pid")")

cat >"$dir/slurm.conf" <<EOF
ClusterName=tlab
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
AuthType=auth/munge
AuthInfo=socket=$dir/munge/socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
KillWait=5
MinJobAge=300
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$dir/slurm.conf"

slurmctld -i -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 1 50); do [ -f "$dir/slurmctld.pid" ] && [ -f "$dir/slurmd.pid" ] && break; sleep 0.1; done
pids+=("$(cat "$dir/slurmctld.pid")" "$(cat "$dir/slurmd.pid")")
ready=""
for _ in $(seq 1 150); do
    if sinfo -h -o '%t' 2>/dev/null | grep -qE '^idle'; then ready=1; break; fi
    sleep 0.2
done
if [ -z "$ready" ]; then
    # The command still runs: its Slurm tests skip, or fail where TLAB_REQUIRE_SLURM says so.
    echo "warning: Slurm did not come up on $host; running without it. Logs:" >&2
    tail -n 20 "$dir/slurmctld.log" "$dir/slurmd.log" "$dir/munge/log" >&2 || true
    unset SLURM_CONF
    "$@"
    exit $?
fi
export TLAB_SLURM=1
"$@"
