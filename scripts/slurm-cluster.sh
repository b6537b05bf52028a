#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for the end-to-end test of profiles/slurm.
#   scripts/slurm-cluster.sh install  install what is missing (Debian: slurm-wlm, munge) and nothing
#                                     else (`make test` runs it before the tests, so that the suite's
#                                     time is the tests', not apt-get's)
#   scripts/slurm-cluster.sh start    install what is missing (as `install`), write
#                                     slurm.conf (this host the only node; partitions cpu and gpu),
#                                     start munged, slurmctld and slurmd; wait until the node is idle
#   scripts/slurm-cluster.sh stop     stop the daemons that `start` started, and nothing else
#   scripts/slurm-cluster.sh status   exit 0 when the cluster answers and its node takes jobs
# Idempotent: `start` on a running cluster only checks it. Needs root (the daemons run as root;
# there is no accounting database, so Snakemake's plugin needs `--slurm-status-command squeue`).
# Exit status 3: the cluster cannot be set up here (not root, no apt-get, packages not installable);
# the reason is on stderr.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
STATE=/run/residual-slurm  # which daemons `start` started (so `stop` leaves others alone)
LOGS=/var/log/slurm
MARK="# Written by the ResiDual pipeline's scripts/slurm-cluster.sh (a single-node test cluster)."

cannot() {
    echo "slurm-cluster: cannot set up a cluster here: $*" >&2
    exit 3
}

install_missing() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurm-wlm)
    command -v slurmd >/dev/null || missing+=(slurm-wlm)
    command -v munged >/dev/null || missing+=(munge)
    [[ ${#missing[@]} -eq 0 ]] && return
    [[ $EUID -eq 0 ]] || cannot "missing ${missing[*]} and not root to install them"
    command -v apt-get >/dev/null || cannot "missing ${missing[*]} and no apt-get (install them by hand)"
    echo "slurm-cluster: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >&2 \
        || cannot "apt-get install ${missing[*]} failed"
}

write_conf() {
    # Never replace a real cluster's configuration: only a missing file or one this script wrote.
    if [[ -e $CONF ]] && ! head -n 1 "$CONF" | grep -qF "$MARK"; then
        cannot "$CONF exists and was not written by this script (a real cluster?); leaving it alone"
    fi
    local host node
    host=$(hostname -s)
    # slurmd -C prints this machine's NodeName line (CPUs, sockets, cores, RealMemory), then UpTime.
    node=$(slurmd -C | head -n 1)
    mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOGS" "$STATE"
    cat >"$CONF.tmp" <<EOF
$MARK
ClusterName=residual
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
# No cgroups (containers rarely delegate them) and no accounting database.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
# Finished jobs stay visible to squeue and scontrol for an hour: the plugin's squeue status checks
# and the test read their final state there (there is no accounting database to ask).
MinJobAge=3600
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=cpu Nodes=$host Default=YES MaxTime=INFINITE State=UP
# The same node: a job that asks for a GPU cannot run here, but the partition exists as on a cluster.
PartitionName=gpu Nodes=$host MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp" "$CONF"
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        mkdir -p /etc/munge
        mungekey --create --keyfile /etc/munge/munge.key
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged
    touch "$STATE/munged"
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return
        sleep 0.2
    done
    cannot "munged did not start (see /var/log/munge/munged.log)"
}

running() {
    local pidfile=$STATE/$1.pid
    [[ -s $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

node_ready() {
    local state
    state=$(sinfo -h -N -p cpu -o %T 2>/dev/null | head -n 1)
    [[ $state == idle* || $state == mixed* || $state == allocated* ]]
}

start() {
    [[ $EUID -eq 0 ]] || cannot "the single-node cluster runs its daemons as root; run as root"
    install_missing
    mkdir -p "$STATE"
    running slurmctld && running slurmd && node_ready && { echo "slurm-cluster: running" >&2; return; }
    write_conf
    start_munge
    running slurmctld || { slurmctld && touch "$STATE/slurmctld"; }
    for _ in $(seq 50); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
    running slurmd || { slurmd && touch "$STATE/slurmd"; }
    for _ in $(seq 150); do
        if node_ready; then
            echo "slurm-cluster: running ($(sinfo -h -o '%P %D %T' | tr '\n' ' '))" >&2
            return
        fi
        # A node that was down when the controller last saw it comes back once it answers.
        scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
        sleep 0.2
    done
    cannot "the node did not become idle: $(sinfo -h -N -o '%N %T %E' 2>&1) (logs: $LOGS)"
}

stop() {
    local daemon pid
    for daemon in slurmd slurmctld; do
        if [[ -e $STATE/$daemon ]] && running "$daemon"; then
            pid=$(cat "$STATE/$daemon.pid")
            kill "$pid"
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        fi
        rm -f "$STATE/$daemon"
    done
    if [[ -e $STATE/munged ]]; then
        pid=$(cat /run/munge/munged.pid 2>/dev/null || true)
        [[ -n $pid ]] && kill "$pid" 2>/dev/null || true
        rm -f "$STATE/munged"
    fi
    echo "slurm-cluster: stopped what it started" >&2
}

case ${1:-} in
    install) install_missing ;;
    start) start ;;
    stop) stop ;;
    status) running slurmctld && running slurmd && node_ready ;;
    *)
        echo "usage: $0 install|start|stop|status" >&2
        exit 2
        ;;
esac
