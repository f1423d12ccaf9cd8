#!/usr/bin/env bash
# A real, single-machine test cluster for clustrix's integration tests:
#   - a private OpenSSH server on 127.0.0.1:$CLUSTRIX_TEST_SSH_PORT, key-only, for an
#     unprivileged test user `clustrix` (does not touch /etc/ssh/sshd_config or a system sshd);
#   - single-node SLURM (Debian 12 packages, 22.05): munge, slurmctld, slurmd, and by default
#     slurmdbd + MariaDB so that `sacct` works. No systemd, no cgroups;
#   - single-node Grid Engine next to it (Debian 12's gridengine 8.1.9): sge_qmaster, sge_execd,
#     queue all.q ($SGE_SLOTS slots), parallel environment smp, scheduler interval 1 s.
#
# Usage (start/stop as root, on Debian):
#   scripts/testcluster.sh start    install what is missing, stop what an earlier run started
#                                   (by pid file), then start everything; idempotent
#   scripts/testcluster.sh stop     stop everything `start` started (by pid file)
#   scripts/testcluster.sh status   exit 0 + one-line summary if ssh as the test user works
#                                   and the SLURM node is idle/mixed/allocated; exit 1 otherwise
#   scripts/testcluster.sh env      print the `export` lines the test suite reads:
#                                   eval "$(scripts/testcluster.sh env)"
#   scripts/testcluster.sh drop-ssh [down_s]   cut every SSH connection of the test user and
#                                   keep sshd down for down_s seconds (fault-injection tests)
#   scripts/testcluster.sh restart-slurmd [down_s [jobid...]]   stop slurmd, keep it down
#                                   down_s seconds, start it again and wait until the node is
#                                   idle/mixed/allocated (resumed if it came back down). Running
#                                   jobs survive (their slurmstepd does not need slurmd), unless
#                                   named: the slurmstepd and processes of each jobid (12345 or
#                                   12345_7) are SIGKILLed while slurmd is down, as if the node
#                                   had crashed under them. Jobs slurmctld tries to launch while
#                                   slurmd is down are requeued (eligible again cred_expire later)
#   scripts/testcluster.sh start-sge | stop-sge   (re)start or stop Grid Engine only
#   scripts/testcluster.sh restart-execd [down_s [jobid...]]   stop sge_execd, keep it down
#                                   down_s seconds, start it again and wait for the queue. Running
#                                   jobs survive (their sge_shepherd does not need execd), unless
#                                   named (12345 or 12345.7): their shepherd and processes are
#                                   SIGKILLed while execd is down (qacct then says failed 19)
#
# With slurmdbd accounting, limits are enforced (AccountingStorageEnforce=associations,limits):
# the test user (and SSH_KEY_OWNER) belong to account clustrix-test, and the test user also to
# account clustrix-limit, which tests may limit (`sacctmgr -i modify user where
# name=clustrix account=clustrix-limit set MaxSubmitJobs=2`) without slowing down anyone
# submitting with the default account; `start` resets that association's limits to none.
#
# Env:
#   CLUSTRIX_TEST_STATE=/tmp/clustrix-testcluster  keys/ (id_ed25519, known_hosts) and sshd/
#   CLUSTRIX_TEST_SSH_PORT=2222
#   CLUSTRIX_TEST_SSH_USER=clustrix   the unprivileged test user (created if missing)
#   SSH_KEY_OWNER=user[:group]        local user who runs the tests and must read the private
#                                     key (default: $SUDO_USER if run via sudo, else root)
#   SLURM_ACCOUNTING=slurmdbd|none    default slurmdbd (MariaDB + slurmdbd, `sacct` works)
#   SLURM_OVERSUBSCRIBE=N             jobs sharing each core, default 8 (OverSubscribe=FORCE:N);
#                                     with 2 CPUs only 2 jobs run at once unless oversubscribed
#   SLURM_SCHED_PARAMS=...            SchedulerParameters (default batch_sched_delay=0,
#                                     bf_interval=5,sched_interval=5;
#                                     set to "" for Slurm's defaults)
#   SLURM_SCHEDULER=sched/backfill    or sched/builtin
#   SLURM_EXTRA_CONF='SlurmdTimeout=10'   extra slurm.conf lines
#   SLURM_KEEP_STATE=1                keep slurmctld job state across restarts (default: wipe:
#                                     squeue/scontrol forget earlier jobs, sacct keeps them)
#   SLURM_CLUSTER=testcluster
#   SGE_SLOTS=16                      slots of Grid Engine's queue all.q (as SLURM's 2 x 8)
#
# Measured on a 2-core machine: sbatch to COMPLETED about 1 s (the slurmctld scheduling loop
# ticks once a second with batch_sched_delay=0); qsub to running about 1 s (schedule_interval
# 1 s); Grid Engine installed from packages ~36 s, (re)started ~13 s.
set -euo pipefail
umask 022

STATE=${CLUSTRIX_TEST_STATE:-/tmp/clustrix-testcluster}
PORT=${CLUSTRIX_TEST_SSH_PORT:-2222}
TUSER=${CLUSTRIX_TEST_SSH_USER:-clustrix}
KEYDIR=$STATE/keys
SSHD_DIR=$STATE/sshd
SSHD_PID=$SSHD_DIR/sshd.pid
KEY=$KEYDIR/id_ed25519
KNOWN_HOSTS=$KEYDIR/known_hosts

ACCT=${SLURM_ACCOUNTING:-slurmdbd}
OVERSUB=${SLURM_OVERSUBSCRIBE:-8}
SCHED_PARAMS=${SLURM_SCHED_PARAMS-batch_sched_delay=0,bf_interval=5,sched_interval=5}
CLUSTER=${SLURM_CLUSTER:-testcluster}
CONF=/etc/slurm/slurm.conf
SPOOL=/var/spool/slurm            # ctld/ and d/ below
LOG=/var/log/slurm
RUN=/run/slurm-test               # our slurm pid files
MUNGE_PID=/run/munge/munged.pid
DBPASS=slurmtestpw
TEST_ACCOUNT=clustrix-test        # default account of the test users
LIMIT_ACCOUNT=clustrix-limit      # second account of the test user, for limit tests
# requeued jobs wait this long before they may start again (SLURM's default is 120 s)
CRED_EXPIRE=10

PACKAGES=(openssh-server openssh-client slurmctld slurmd slurm-client munge
          slurmdbd mariadb-server python3 python3-venv)

# --- helpers ---------------------------------------------------------------------------------
now_us() { local t=${EPOCHREALTIME//[.,]/}; echo "${t#0}"; }   # bash 5, no bc needed
T0=$(now_us)
step() {  # print elapsed time since the script started, like the reference scripts
    local d=$(( $(now_us) - T0 ))
    printf '[%3d.%02ds] %s\n' $(( d / 1000000 )) $(( d % 1000000 / 10000 )) "$*"
}
die() { echo "testcluster: $*" >&2; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "$1 must run as root"; }
node_name() { hostname -s; }

ssh_test_user() {  # ssh_test_user CMD...: run CMD as the test user over the private sshd
    ssh -q -o BatchMode=yes -o ConnectTimeout=5 -o UserKnownHostsFile="$KNOWN_HOSTS" \
        -o StrictHostKeyChecking=yes -p "$PORT" -i "$KEY" "$TUSER@127.0.0.1" "$@"
}

# kill_pidfile FILE NAME: SIGTERM the process in FILE if it is still NAME (a stale pid file
# after a reboot must not kill an unrelated process); add the pid to KILLED when signalled.
KILLED=()
kill_pidfile() {
    local f=$1 name=$2 pid
    [ -s "$f" ] || return 0
    pid=$(cat "$f"); rm -f "$f"
    [ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" = "$name" ] || return 0
    if kill "$pid" 2>/dev/null; then KILLED+=("$pid"); fi
}

wait_gone() {  # wait_gone PID...: wait up to 15 s, then SIGKILL what is left
    local pid alive
    for _ in $(seq 150); do
        alive=
        for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ -z "$alive" ] && return 0
        sleep 0.1
    done
    for pid in "$@"; do kill -9 "$pid" 2>/dev/null || true; done
}

# --- install (no-op when everything is installed) ----------------------------------------
apt_install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null; }

install_packages() {
    local p missing=() created_policy=
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} = 0 ] && return 0
    if [ ! -e /usr/sbin/policy-rc.d ]; then   # stop apt from starting daemons itself
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d; created_policy=1
    fi
    # on a fresh machine the package lists may be missing or stale: update once and retry
    if ! apt_install "${missing[@]}" 2>/dev/null; then
        apt-get update -q >/dev/null
        apt_install "${missing[@]}" || { [ -n "$created_policy" ] && rm -f /usr/sbin/policy-rc.d; exit 1; }
    fi
    [ -n "$created_policy" ] && rm -f /usr/sbin/policy-rc.d
    step "installed: ${missing[*]}"
}

# --- test user + key -----------------------------------------------------------------------
setup_user() {
    local home owner=${SSH_KEY_OWNER:-${SUDO_USER:-}}
    id "$TUSER" >/dev/null 2>&1 || useradd -m -s /bin/bash "$TUSER"
    # useradd leaves the password field as "!" (= locked); with UsePAM no, sshd
    # refuses locked accounts even for pubkey auth.  "*" = no valid password, not locked.
    usermod -p '*' "$TUSER"
    home=$(getent passwd "$TUSER" | cut -d: -f6)

    mkdir -p "$KEYDIR"
    [ -f "$KEY" ] || ssh-keygen -q -t ed25519 -N '' -C "$TUSER@test" -f "$KEY"
    install -d -m 700 -o "$TUSER" -g "$TUSER" "$home/.ssh"
    install -m 600 -o "$TUSER" -g "$TUSER" "$KEY.pub" "$home/.ssh/authorized_keys"
    # the private key must belong to whoever runs the tests (ssh refuses group/world-readable keys)
    [ -n "$owner" ] && chown -R "$owner" "$KEYDIR"
    chmod 755 "$STATE" "$KEYDIR"
    step "user $TUSER + key $KEY${owner:+ (owner $owner)}"
}

# --- sshd ------------------------------------------------------------------------------------
stop_sshd() {
    KILLED=()
    kill_pidfile "$SSHD_PID" sshd
    [ ${#KILLED[@]} = 0 ] || wait_gone "${KILLED[@]}"
}

start_sshd() {
    stop_sshd
    mkdir -p "$SSHD_DIR" /run/sshd          # /run/sshd = privsep dir sshd insists on
    chmod 755 /run/sshd
    [ -f "$SSHD_DIR/ssh_host_ed25519_key" ] ||
        ssh-keygen -q -t ed25519 -N '' -f "$SSHD_DIR/ssh_host_ed25519_key"
    cat > "$SSHD_DIR/sshd_config" <<EOF
ListenAddress 127.0.0.1
Port $PORT
HostKey $SSHD_DIR/ssh_host_ed25519_key
PidFile $SSHD_PID
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin no
AllowUsers $TUSER
AuthorizedKeysFile .ssh/authorized_keys
StrictModes yes
# asyncssh multiplexes channels (conn.run, SFTP) over one connection; the
# default MaxSessions 10 caps that at 10 concurrent channels
MaxStartups 100:30:200
MaxSessions 100
LogLevel INFO
Subsystem sftp internal-sftp
# Grid Engine's settings in the login environment, as a site's profile gives them
SetEnv SGE_ROOT=$SGE_ROOT_DIR SGE_CELL=$SGE_CELL_NAME
EOF
    /usr/sbin/sshd -t -f "$SSHD_DIR/sshd_config"
    /usr/sbin/sshd -f "$SSHD_DIR/sshd_config" -E "$SSHD_DIR/sshd.log"

    # known_hosts line for clients that want strict host key checking
    echo "[127.0.0.1]:$PORT $(cut -d' ' -f1,2 "$SSHD_DIR/ssh_host_ed25519_key.pub")" > "$KNOWN_HOSTS"
    local owner=${SSH_KEY_OWNER:-${SUDO_USER:-}}
    [ -z "$owner" ] || chown "$owner" "$KNOWN_HOSTS"

    for _ in $(seq 50); do
        if ssh_test_user true 2>/dev/null; then
            step "sshd up: pid $(cat "$SSHD_PID") 127.0.0.1:$PORT user $TUSER"
            return 0
        fi
        sleep 0.2
    done
    echo "sshd did not come up; log:" >&2; cat "$SSHD_DIR/sshd.log" >&2; exit 1
}

# --- slurm -----------------------------------------------------------------------------------
stop_slurm() {  # SIGTERM everything a previous run started (pid files), wait, then SIGKILL
    local mariadb_stop=
    if [ -s /run/mysqld/mysqld.pid ] && [ -x /etc/init.d/mariadb ]; then
        /etc/init.d/mariadb stop >/dev/null 2>&1 &      # in parallel with the rest
        mariadb_stop=$!
    fi
    # each takes ~2 s to exit, so signal all first and wait once
    KILLED=()
    kill_pidfile "$RUN/slurmd.pid" slurmd
    kill_pidfile "$RUN/slurmctld.pid" slurmctld
    kill_pidfile "$RUN/slurmdbd.pid" slurmdbd
    kill_pidfile "$MUNGE_PID" munged
    [ ${#KILLED[@]} = 0 ] || wait_gone "${KILLED[@]}"
    [ -z "$mariadb_stop" ] || wait "$mariadb_stop" || true
}

start_munge() {
    if [ ! -s /etc/munge/munge.key ]; then       # Debian's postinst normally creates it
        mungekey --create --keyfile /etc/munge/munge.key
    fi
    chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
    install -d -o munge -g munge -m 755 /run/munge
    install -d -o munge -g munge -m 700 /var/lib/munge /var/log/munge
    runuser -u munge -- /usr/sbin/munged --pid-file="$MUNGE_PID"
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n | unmunge >/dev/null
    step "munged up"
}

# slurm.conf is written before slurmdbd starts, because slurmdbd/sacctmgr read it too;
# a stale one saying accounting_storage/none cost ~10 s in the sacctmgr wait below.
write_slurm_conf() {
    local node hw acct_lines
    node=$(node_name)
    if [ "$ACCT" = slurmdbd ]; then
        acct_lines="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
# jobs need an association (start_slurmdbd creates them); per-association limits such as
# MaxSubmitJobs are enforced (the submission-limit tests set them)
AccountingStorageEnforce=associations,limits
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30"
    else
        acct_lines="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
    fi
    # slurmd -C reports the real CPUs/sockets/cores/memory; using it avoids the node
    # being drained for "Low socket*core*thread count" / "Low RealMemory".
    hw=$(slurmd -C | head -1 | sed "s/^NodeName=[^ ]* //")
    install -d -o slurm -g slurm -m 755 "$SPOOL/ctld" "$LOG"
    install -d -o root -g root -m 755 "$SPOOL/d" "$RUN"
    # `sacct -c` (read the jobcomp file) opens it O_WRONLY|O_APPEND, so users need write access
    [ -e "$LOG/jobcomp.log" ] || install -o slurm -g slurm -m 666 /dev/null "$LOG/jobcomp.log"
    cat > "$CONF" <<EOF
# written by clustrix scripts/testcluster.sh
ClusterName=$CLUSTER
SlurmctldHost=$node(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
# cred_expire also sets how long a requeued job waits before it may start again: jobs that
# slurmd lost (restart-slurmd) come back after ${CRED_EXPIRE} s instead of 120 s
AuthInfo=cred_expire=$CRED_EXPIRE
MpiDefault=none
MailProg=/bin/true
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
# no cgroups: plain process tracking, no task binding (so --mem is not enforced by a cgroup)
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=${SLURM_SCHEDULER:-sched/backfill}
# the scheduling loop ticks once a second with batch_sched_delay=0: sbatch -> COMPLETED ~1 s.
# A job that becomes eligible later (a requeued job, after cred_expire) starts at the next
# main or backfill scheduling pass: sched_interval=5 and bf_interval=5 instead of 60 s and
# 30 s (measured: requeue to RUNNING 12 s instead of 38 s).
${SCHED_PARAMS:+SchedulerParameters=$SCHED_PARAMS}
# Finished jobs stay visible in squeue -t all / scontrol show job for MinJobAge seconds.
# With MinJobAge=3600 and the default MaxJobCount=10000 a test run submitting thousands of
# jobs filled slurmctld's job table for an hour (seen after ~7,400 jobs): keep records 300 s
# and allow more of them. sacct keeps finished jobs either way when slurmdbd runs.
MinJobAge=300
MaxJobCount=50000
ReturnToService=2
KillWait=5
InactiveLimit=0
# one line per finished job (JobId, UserId, JobState, ExitCode, times, ...)
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG/jobcomp.log
$acct_lines
${SLURM_EXTRA_CONF:-}
NodeName=$node NodeAddr=127.0.0.1 $hw State=UNKNOWN
# OverSubscribe=FORCE:N lets N jobs share each core: with 2 CPUs only 2 jobs run at once otherwise
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:$OVERSUB
EOF
    step "slurm.conf written ($ACCT accounting, OverSubscribe=FORCE:$OVERSUB)"
}

start_slurmdbd() {
    # one of the two "Database settings not recommended values" warnings of slurmdbd
    printf '[mysqld]\ninnodb_lock_wait_timeout=900\n' \
        > /etc/mysql/mariadb.conf.d/99-slurmdbd.cnf
    /etc/init.d/mariadb start >/dev/null     # the SysV script works without systemd
    mysql -uroot <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF
    step "mariadb up"
    cat > /etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DBPASS
StorageLoc=slurm_acct_db
EOF
    chown slurm:slurm /etc/slurm/slurmdbd.conf; chmod 600 /etc/slurm/slurmdbd.conf   # slurmdbd insists
    /usr/sbin/slurmdbd
    for _ in $(seq 100); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.1; done
    # register the cluster in the accounting DB (fails harmlessly on re-run)
    sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || true
    setup_associations
    step "slurmdbd up"
}

# AccountingStorageEnforce=associations refuses jobs of users without an association: root
# (slurm-local tests) has one in account root once the cluster exists; add the test user and
# the local user who runs the tests. Each `add` fails harmlessly when it exists already.
setup_associations() {
    local owner=${SSH_KEY_OWNER:-${SUDO_USER:-}} users=("$TUSER") u
    owner=${owner%%:*}
    [ -n "$owner" ] && [ "$owner" != root ] && [ "$owner" != "$TUSER" ] && users+=("$owner")
    sacctmgr -i add account "$TEST_ACCOUNT,$LIMIT_ACCOUNT" cluster="$CLUSTER" \
        description=clustrix-tests organization=clustrix >/dev/null 2>&1 || true
    for u in "${users[@]}"; do
        sacctmgr -i add user "$u" account="$TEST_ACCOUNT" defaultaccount="$TEST_ACCOUNT" \
            cluster="$CLUSTER" >/dev/null 2>&1 || true
    done
    sacctmgr -i add user "$TUSER" account="$LIMIT_ACCOUNT" cluster="$CLUSTER" >/dev/null 2>&1 || true
    # a limit test that died before its cleanup must not slow down the next run
    sacctmgr -i modify user where name="$TUSER" account="$LIMIT_ACCOUNT" cluster="$CLUSTER" \
        set MaxSubmitJobs=-1 MaxJobs=-1 >/dev/null 2>&1 || true
    for u in root "${users[@]}"; do
        [ -n "$(sacctmgr -n -P list assoc cluster="$CLUSTER" user="$u" format=user)" ] ||
            die "no SLURM association for user $u (AccountingStorageEnforce would refuse its jobs)"
    done
    step "associations: ${users[*]} in $TEST_ACCOUNT, $TUSER also in $LIMIT_ACCOUNT; root in root"
}

start_slurm_daemons() {
    local node
    node=$(node_name)
    if [ "${SLURM_KEEP_STATE:-0}" = 1 ]; then /usr/sbin/slurmctld; else /usr/sbin/slurmctld -c; fi
    /usr/sbin/slurmd -N "$node"
    wait_node_up
}

wait_node_up() {  # until the node is idle/mixed/allocated (resume it if it stays down)
    local node state='' i
    node=$(node_name)
    for i in $(seq 150); do
        state=$(sinfo -h -N -n "$node" -o %T 2>/dev/null || true)
        case "$state" in
            idle|mixed|allocated) step "slurm up: node $node $state"; return 0 ;;
            down*|drain*|unknown*)
                if [ "$i" -gt 10 ]; then scontrol update nodename="$node" state=resume 2>/dev/null || true; fi ;;
        esac
        sleep 0.2
    done
    echo "slurm did not come up (node state: '$state')" >&2
    tail -20 "$LOG/slurmctld.log" "$LOG/slurmd.log" >&2
    exit 1
}

start_slurm() {
    stop_slurm
    step "old slurm daemons stopped"
    start_munge
    write_slurm_conf
    [ "$ACCT" = slurmdbd ] && start_slurmdbd
    start_slurm_daemons
}

# --- grid engine (SGE) -------------------------------------------------------------------------
# Single-node (Son of) Grid Engine 8.1.9 from Debian 12's packages, next to SLURM, no systemd:
# sge_qmaster + sge_execd, one exec host, queue all.q with $SGE_SLOTS slots, parallel
# environment $SGE_PE ($pe_slots: all of a job's slots on one host), scheduler every second.
SGE_ROOT_DIR=/var/lib/gridengine
SGE_CELL_NAME=default
SGE_COMMON=$SGE_ROOT_DIR/$SGE_CELL_NAME/common
SGE_QMASTER_PID=/var/spool/gridengine/qmaster/qmaster.pid
SGE_SLOTS=${SGE_SLOTS:-16}     # as SLURM's 2 CPUs x OverSubscribe=FORCE:8
SGE_PE=smp
SGE_PROJECT=clustrix-test
SGE_CONF_TMP=$STATE/sge-conf

sge_env() { export SGE_ROOT=$SGE_ROOT_DIR SGE_CELL=$SGE_CELL_NAME; }

install_sge() {
    dpkg-query -W -f='${Status}' gridengine-master 2>/dev/null | grep -q 'ok installed' &&
        dpkg-query -W -f='${Status}' gridengine-exec 2>/dev/null | grep -q 'ok installed' &&
        return 0
    # debconf preseed: the master's postinst then creates the cell (init_cluster) itself
    debconf-set-selections <<EOF
gridengine-common shared/gridengineconfig boolean true
gridengine-common shared/gridenginecell string $SGE_CELL_NAME
gridengine-common shared/gridenginemaster string $(node_name)
EOF
    local created_policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then   # keep apt from starting the daemons
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d; created_policy=1
    fi
    if ! apt_install gridengine-master gridengine-exec gridengine-client 2>/dev/null; then
        apt-get update -q >/dev/null
        apt_install gridengine-master gridengine-exec gridengine-client ||
            { [ -n "$created_policy" ] && rm -f /usr/sbin/policy-rc.d; exit 1; }
    fi
    [ -n "$created_policy" ] && rm -f /usr/sbin/policy-rc.d
    step "installed: gridengine-master gridengine-exec gridengine-client"
}

sge_execd_pidfiles() {  # execd's spool dir is named after the *unaliased* host (localhost)
    local f
    for f in /var/spool/gridengine/execd/*/execd.pid; do [ -e "$f" ] && echo "$f"; done
    return 0
}

stop_sge_execd() {
    local f
    KILLED=()
    for f in $(sge_execd_pidfiles); do kill_pidfile "$f" sge_execd; done
    [ ${#KILLED[@]} = 0 ] || wait_gone "${KILLED[@]}"
}

stop_sge() {
    local f
    KILLED=()
    for f in $(sge_execd_pidfiles); do kill_pidfile "$f" sge_execd; done
    kill_pidfile "$SGE_QMASTER_PID" sge_qmaster
    [ ${#KILLED[@]} = 0 ] || wait_gone "${KILLED[@]}"
}

qconf_quiet() {  # qconf ARGS...: silent unless it fails
    local out
    out=$(qconf "$@" 2>&1) || die "qconf $*: $out"
}

configure_sge() {
    local host
    host=$(node_name)
    mkdir -p "$SGE_CONF_TMP/conf"
    qconf -sh 2>/dev/null | grep -qx "$host" || qconf_quiet -ah "$host"   # admin host
    qconf -ss 2>/dev/null | grep -qx "$host" || qconf_quiet -as "$host"   # submit host
    cat > "$SGE_CONF_TMP/exechost" <<EOF
hostname $host
load_scaling NONE
complex_values NONE
user_lists NONE
xuser_lists NONE
projects NONE
xprojects NONE
usage_scaling NONE
report_variables NONE
EOF
    if qconf -sel 2>/dev/null | grep -qx "$host"; then qconf_quiet -Me "$SGE_CONF_TMP/exechost"
    else qconf_quiet -Ae "$SGE_CONF_TMP/exechost"; fi

    # the scheduler runs every second and right after a submit or a job's end (default: every
    # 15 s): qsub to running about 1 s, as SLURM's scheduling loop here
    qconf -ssconf | sed -e 's/^schedule_interval .*/schedule_interval 0:0:1/' \
                        -e 's/^flush_submit_sec .*/flush_submit_sec 1/' \
                        -e 's/^flush_finish_sec .*/flush_finish_sec 1/' > "$SGE_CONF_TMP/sconf"
    qconf_quiet -Msconf "$SGE_CONF_TMP/sconf"

    # global config: the accounting file (qacct) is written at once instead of every 15 s;
    # min_uid/min_gid 0: the sge-local tests submit as root, whose jobs execd refuses with
    # the default 1000. -Mconf takes the config's name from the file's name.
    qconf -sconf global | grep -v '^#' | sed -e '/^reporting_params/,/[^\\]$/d' \
        -e 's/^min_uid .*/min_uid 0/' -e 's/^min_gid .*/min_gid 0/' \
        > "$SGE_CONF_TMP/conf/global"
    echo 'reporting_params accounting=true reporting=false flush_time=00:00:01 joblog=false sharelog=00:00:00 accounting_flush_time=00:00:00' \
        >> "$SGE_CONF_TMP/conf/global"
    (cd "$SGE_CONF_TMP/conf" && qconf_quiet -Mconf global)

    # a parallel environment for multi-core jobs (cores -> -pe smp N), all slots on one host
    cat > "$SGE_CONF_TMP/pe" <<EOF
pe_name            $SGE_PE
slots              9999
user_lists         NONE
xuser_lists        NONE
start_proc_args    NONE
stop_proc_args     NONE
allocation_rule    \$pe_slots
control_slaves     FALSE
job_is_first_task  TRUE
urgency_slots      min
accounting_summary FALSE
qsort_args         NONE
EOF
    if qconf -spl 2>/dev/null | grep -qx "$SGE_PE"; then qconf_quiet -Mp "$SGE_CONF_TMP/pe"
    else qconf_quiet -Ap "$SGE_CONF_TMP/pe"; fi

    # a project (account= maps to qsub -P), open to every user
    printf 'name %s\noticket 0\nfshare 0\nacl NONE\nxacl NONE\n' "$SGE_PROJECT" \
        > "$SGE_CONF_TMP/project"
    if qconf -sprjl 2>/dev/null | grep -qx "$SGE_PROJECT"; then
        qconf_quiet -Mprj "$SGE_CONF_TMP/project"
    else qconf_quiet -Aprj "$SGE_CONF_TMP/project"; fi

    cat > "$SGE_CONF_TMP/queue" <<EOF
qname                 all.q
hostlist              $host
seq_no                0
load_thresholds       NONE
suspend_thresholds    NONE
nsuspend              1
suspend_interval      00:05:00
priority              0
min_cpu_interval      00:05:00
processors            UNDEFINED
qtype                 BATCH INTERACTIVE
ckpt_list             NONE
pe_list               $SGE_PE
rerun                 FALSE
slots                 $SGE_SLOTS
tmpdir                /tmp
shell                 /bin/sh
prolog                NONE
epilog                NONE
shell_start_mode      posix_compliant
starter_method        NONE
suspend_method        NONE
resume_method         NONE
terminate_method      NONE
notify                00:00:60
owner_list            NONE
user_lists            NONE
xuser_lists           NONE
subordinate_list      NONE
complex_values        NONE
projects              NONE
xprojects             NONE
calendar              NONE
initial_state         default
s_rt                  INFINITY
h_rt                  INFINITY
s_cpu                 INFINITY
h_cpu                 INFINITY
s_fsize               INFINITY
h_fsize               INFINITY
s_data                INFINITY
h_data                INFINITY
s_stack               INFINITY
h_stack               INFINITY
s_core                INFINITY
h_core                INFINITY
s_rss                 INFINITY
h_rss                 INFINITY
s_vmem                INFINITY
h_vmem                INFINITY
EOF
    if qconf -sql 2>/dev/null | grep -qx all.q; then qconf_quiet -Mq "$SGE_CONF_TMP/queue"
    else qconf_quiet -Aq "$SGE_CONF_TMP/queue"; fi
    step "sge configured (all.q: $SGE_SLOTS slots, pe $SGE_PE, project $SGE_PROJECT)"
}

wait_sge_queue() {  # until the queue instance has reported load and has no state flag
    local host q st lav
    host=$(node_name); q="all.q@$host"
    for _ in $(seq 150); do
        st=$(qstat -f -q "$q" 2>/dev/null | awk -v q="$q" '$1==q {print $6}')
        lav=$(qstat -f -q "$q" 2>/dev/null | awk -v q="$q" '$1==q {print $4}')
        if [ -n "$lav" ] && [ "$lav" != "-NA-" ] && [ -z "$st" ]; then
            step "sge up: $q"; return 0
        fi
        sleep 0.2
    done
    qstat -f >&2; die "sge_execd did not come up"
}

start_sge() {
    local host
    install_sge
    sge_env
    stop_sge
    step "old sge daemons stopped"
    host=$(node_name)
    # $host resolves to 127.0.0.1, whose reverse lookup is "localhost": qmaster then refuses
    # its clients ("client IP resolved to host name localhost. This is not identical to
    # clients host name vm"). host_aliases maps localhost to $host.
    echo "$host localhost" > "$SGE_COMMON/host_aliases"
    echo "$host" > "$SGE_COMMON/act_qmaster"
    chown sgeadmin:sgeadmin "$SGE_COMMON/host_aliases" "$SGE_COMMON/act_qmaster"
    /usr/sbin/sge_qmaster            # daemonizes, runs as sgeadmin, pid in $SGE_QMASTER_PID
    for _ in $(seq 100); do qstat -f >/dev/null 2>&1 && break; sleep 0.1; done
    step "sge_qmaster up"
    configure_sge
    /usr/sbin/sge_execd
    wait_sge_queue
}

sge_shepherd_of() {  # sge_shepherd_of 12345 | 12345.7: pid of the job's (task's) shepherd
    local job=$1 f
    [[ $job == *.* ]] || job="$job.1"     # a plain job is task 1 of itself
    # execd writes each shepherd's pid into the job's active_jobs directory
    for f in /var/spool/gridengine/execd/*/active_jobs/"$job"/pid; do
        [ -s "$f" ] && [ "$(cat "/proc/$(cat "$f")/comm" 2>/dev/null)" = sge_shepherd ] && cat "$f"
    done
    return 0
}

cmd_restart_execd() {  # restart-execd DOWN_S [JOBID...]
    need_root restart-execd
    sge_env
    local down=${1:-0} job shepherd shepherds=() pids=() kids=()
    shift || true
    for job in "$@"; do   # found first: a wrong job ID must not leave execd down
        # qstat says "r" as soon as execd took the job; its shepherd (and its pid file)
        # may come a moment later on a busy machine: wait up to 20 s for it
        local tries=0
        shepherd=$(sge_shepherd_of "$job")
        while [ -z "$shepherd" ] && [ $tries -lt 100 ]; do
            sleep 0.2; tries=$((tries + 1)); shepherd=$(sge_shepherd_of "$job")
        done
        [ -n "$shepherd" ] || die "no sge_shepherd for job $job (not running here?)"
        shepherds+=("$shepherd")
    done
    stop_sge_execd
    step "sge_execd stopped"
    for shepherd in "${shepherds[@]}"; do
        kill -STOP "$shepherd" 2>/dev/null || true   # stopped processes cannot fork
        mapfile -t kids < <(descendants "$shepherd")
        [ ${#kids[@]} = 0 ] || kill -STOP "${kids[@]}" 2>/dev/null || true
        mapfile -t kids < <(descendants "$shepherd")
        pids+=("$shepherd" "${kids[@]}")
    done
    if [ ${#pids[@]} != 0 ]; then
        kill -KILL "${pids[@]}" 2>/dev/null || true
        step "SIGKILLed the sge_shepherd and processes of job(s) $* (pids ${pids[*]})"
    fi
    sleep "$down"
    /usr/sbin/sge_execd
    wait_sge_queue
}

sge_status() {  # "up", or why not (exit 1)
    local q
    [ -s "$SGE_QMASTER_PID" ] || { echo "no sge_qmaster"; return 1; }
    q="all.q@$(node_name)"
    ( sge_env; qstat -f -q "$q" 2>/dev/null | awk -v q="$q" '$1==q && $6=="" {ok=1} END {exit !ok}' ) ||
        { echo "queue $q not ok"; return 1; }
    echo up
}

# --- SSH login tests: a jump host and a two-factor sshd ------------------------------------------
# Two more private sshd instances on loopback for tests/integration/test_ssh_login.py, for the
# same test user, key and host key as the sshd on $PORT:
#   - $BASTION_PORT, a jump host (bastion): key only, no shell (ForceCommand), TCP forwarding
#     to the other two only (PermitOpen);
#   - $TWOFA_PORT: a key AND a one-time code (AuthenticationMethods publickey,keyboard-interactive;
#     PAM pam_google_authenticator, TOTP, with a secret made here that the tests read to compute
#     the codes). sshd takes its PAM service name from the name it is started as: it runs as
#     $LOGIN_DIR/$TWOFA_PAM (a symlink to sshd) with /etc/pam.d/$TWOFA_PAM, so the system's
#     /etc/pam.d/sshd is left alone.
# `start` starts them, `stop` stops them; `start-login`/`stop-login` only them (after `start`).
# Env: CLUSTRIX_TEST_BASTION_PORT=2224, CLUSTRIX_TEST_2FA_PORT=2225.
BASTION_PORT=${CLUSTRIX_TEST_BASTION_PORT:-2224}
TWOFA_PORT=${CLUSTRIX_TEST_2FA_PORT:-2225}
LOGIN_DIR=$STATE/sshd-login
TWOFA_PAM=clustrix-2fa                      # <= 15 characters: it is the daemon's comm too
TOTP_SECRET=$KEYDIR/totp_secret             # base32, for the tests
LOGIN_KNOWN_HOSTS=$KEYDIR/known_hosts_login # the host key at $PORT, $BASTION_PORT, $TWOFA_PORT

install_login_packages() {
    dpkg-query -W -f='${Status}' libpam-google-authenticator 2>/dev/null | grep -q 'ok installed' &&
        return 0
    if ! apt_install libpam-google-authenticator 2>/dev/null; then
        apt-get update -q >/dev/null
        apt_install libpam-google-authenticator
    fi
    step "installed: libpam-google-authenticator"
}

stop_login_sshds() {
    KILLED=()
    kill_pidfile "$LOGIN_DIR/bastion.pid" sshd
    kill_pidfile "$LOGIN_DIR/2fa.pid" "$TWOFA_PAM"
    [ ${#KILLED[@]} = 0 ] || wait_gone "${KILLED[@]}"
}

wait_ssh_banner() {  # wait_ssh_banner PORT: until an SSH server answers on 127.0.0.1:PORT
    local banner
    for _ in $(seq 50); do
        banner=$(timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1 && head -c 4 <&3" 2>/dev/null || true)
        [ "$banner" = SSH- ] && return 0
        sleep 0.1
    done
    return 1
}

start_login_sshds() {  # after start_sshd: reuses its host key and the test user's key
    local owner=${SSH_KEY_OWNER:-${SUDO_USER:-}} secret name
    install_login_packages
    stop_login_sshds
    mkdir -p "$LOGIN_DIR"
    if [ ! -s "$TOTP_SECRET" ]; then   # 160 random bits, as google-authenticator makes them
        (umask 077; head -c 20 /dev/urandom | base32 | tr -d '=\n' > "$TOTP_SECRET")
    fi
    secret=$(cat "$TOTP_SECRET")
    # the module's own copy: owned by root (user=root below), private; codes may be used
    # again within their window (no DISALLOW_REUSE) so that a reconnection can reuse one
    (umask 077; printf '%s\n" TOTP_AUTH\n" WINDOW_SIZE 3\n' "$secret" > "$LOGIN_DIR/totp")
    cat > "/etc/pam.d/$TWOFA_PAM" <<EOF
# written by clustrix scripts/testcluster.sh for its two-factor test sshd on 127.0.0.1:$TWOFA_PORT
auth     required pam_google_authenticator.so secret=$LOGIN_DIR/totp user=root
account  required pam_permit.so
session  required pam_permit.so
password required pam_deny.so
EOF
    ln -sfn /usr/sbin/sshd "$LOGIN_DIR/$TWOFA_PAM"
    for name in bastion 2fa; do
        cat > "$LOGIN_DIR/$name.conf" <<EOF
ListenAddress 127.0.0.1
HostKey $SSHD_DIR/ssh_host_ed25519_key
PidFile $LOGIN_DIR/$name.pid
PermitRootLogin no
AllowUsers $TUSER
AuthorizedKeysFile .ssh/authorized_keys
StrictModes yes
PubkeyAuthentication yes
PasswordAuthentication no
MaxStartups 100:30:200
MaxSessions 100
LogLevel VERBOSE
EOF
    done
    cat >> "$LOGIN_DIR/bastion.conf" <<EOF
Port $BASTION_PORT
KbdInteractiveAuthentication no
UsePAM no
# a jump host only: no shell, TCP forwarding to the test sshds and nowhere else
ForceCommand /bin/false
PermitTTY no
X11Forwarding no
AllowTcpForwarding local
PermitOpen 127.0.0.1:$PORT 127.0.0.1:$TWOFA_PORT
EOF
    cat >> "$LOGIN_DIR/2fa.conf" <<EOF
Port $TWOFA_PORT
UsePAM yes
KbdInteractiveAuthentication yes
AuthenticationMethods publickey,keyboard-interactive
Subsystem sftp internal-sftp
EOF
    /usr/sbin/sshd -t -f "$LOGIN_DIR/bastion.conf"
    "$LOGIN_DIR/$TWOFA_PAM" -t -f "$LOGIN_DIR/2fa.conf"
    /usr/sbin/sshd -f "$LOGIN_DIR/bastion.conf" -E "$LOGIN_DIR/bastion.log"
    "$LOGIN_DIR/$TWOFA_PAM" -f "$LOGIN_DIR/2fa.conf" -E "$LOGIN_DIR/2fa.log"

    local hostkey
    hostkey=$(cut -d' ' -f1,2 "$SSHD_DIR/ssh_host_ed25519_key.pub")
    printf '[127.0.0.1]:%s %s\n' "$PORT" "$hostkey" "$BASTION_PORT" "$hostkey" \
        "$TWOFA_PORT" "$hostkey" > "$LOGIN_KNOWN_HOSTS"
    [ -z "$owner" ] || chown "$owner" "$LOGIN_KNOWN_HOSTS" "$TOTP_SECRET"
    wait_ssh_banner "$BASTION_PORT" || { cat "$LOGIN_DIR/bastion.log" >&2; die "bastion sshd did not come up"; }
    wait_ssh_banner "$TWOFA_PORT" || { cat "$LOGIN_DIR/2fa.log" >&2; die "2FA sshd did not come up"; }
    step "login sshds up: jump host 127.0.0.1:$BASTION_PORT, key + one-time code 127.0.0.1:$TWOFA_PORT"
}

login_env() {
    printf 'export CLUSTRIX_TEST_BASTION_PORT=%q\n' "$BASTION_PORT"
    printf 'export CLUSTRIX_TEST_2FA_PORT=%q\n' "$TWOFA_PORT"
    printf 'export CLUSTRIX_TEST_TOTP_SECRET=%q\n' "$TOTP_SECRET"
    printf 'export CLUSTRIX_TEST_LOGIN_KNOWN_HOSTS=%q\n' "$LOGIN_KNOWN_HOSTS"
}

# --- commands ----------------------------------------------------------------------------------
cmd_start() {
    need_root start
    case "$ACCT" in slurmdbd|none) ;; *) die "SLURM_ACCOUNTING must be slurmdbd or none" ;; esac
    install_packages
    setup_user
    start_sshd
    start_login_sshds
    start_slurm
    start_sge
    step "test cluster up (scripts/testcluster.sh env prints the settings)"
}

cmd_stop() {
    need_root stop
    stop_sshd
    stop_login_sshds
    stop_slurm
    stop_sge
    step "stopped"
}

cmd_drop_ssh() {  # drop every SSH connection of the test user, keep sshd down for $1 s
    need_root drop-ssh
    stop_sshd
    pkill -KILL -f "^sshd: $TUSER" 2>/dev/null || true   # the per-connection processes
    sleep "${1:-0}"
    start_sshd
}

cmd_restart_slurmd() {  # restart-slurmd DOWN_S [JOBID...]
    need_root restart-slurmd
    local down=${1:-0} job raw stepd stepds=() pids=() kids=()
    shift || true
    for job in "$@"; do   # found first: a wrong job ID must not leave slurmd down
        raw=$(squeue -h -j "$job" -o %A 2>/dev/null | head -1 || true)   # 12345_7 -> its own job ID
        stepd=$(pgrep -f "^slurmstepd: \[${raw:-$job}\.batch\]" || true)
        [ -n "$stepd" ] || die "no slurmstepd for job $job (not running here?)"
        stepds+=("$stepd")
    done
    KILLED=()
    kill_pidfile "$RUN/slurmd.pid" slurmd
    [ ${#KILLED[@]} = 0 ] || wait_gone "${KILLED[@]}"
    step "slurmd stopped"
    for stepd in "${stepds[@]}"; do
        kill -STOP "$stepd" 2>/dev/null || true   # stopped processes cannot fork
        mapfile -t kids < <(descendants "$stepd")
        [ ${#kids[@]} = 0 ] || kill -STOP "${kids[@]}" 2>/dev/null || true
        mapfile -t kids < <(descendants "$stepd")   # again: what forked before its STOP
        pids+=("$stepd" "${kids[@]}")
    done
    if [ ${#pids[@]} != 0 ]; then
        kill -KILL "${pids[@]}" 2>/dev/null || true
        step "SIGKILLed the slurmstepd and processes of job(s) $* (pids ${pids[*]})"
    fi
    sleep "$down"
    /usr/sbin/slurmd -N "$(node_name)"
    wait_node_up
}

descendants() {  # descendants PID: every process below PID
    local p
    for p in $(pgrep -P "$1"); do echo "$p"; descendants "$p"; done
}

cmd_status() {
    local node state acct sge
    if ! ssh_test_user true 2>/dev/null; then
        echo "down: ssh $TUSER@127.0.0.1:$PORT with $KEY failed"; return 1
    fi
    node=$(node_name)
    state=$(sinfo -h -N -n "$node" -o %T 2>/dev/null || true)
    case "$state" in
        idle|mixed|allocated) ;;
        *) echo "down: sshd ok but slurm node $node state '${state:-no answer}'"; return 1 ;;
    esac
    acct=$(scontrol show config 2>/dev/null | sed -n 's/^AccountingStorageType *= *//p')
    sge=$(sge_status) || { echo "down: sshd and slurm ok but grid engine: $sge"; return 1; }
    echo "up: sshd $TUSER@127.0.0.1:$PORT, slurm node $node $state, accounting ${acct:-unknown}, grid engine $sge"
}

cmd_env() {
    printf 'export CLUSTRIX_TEST_SSH_HOST=%q\n' 127.0.0.1
    printf 'export CLUSTRIX_TEST_SSH_PORT=%q\n' "$PORT"
    printf 'export CLUSTRIX_TEST_SSH_USER=%q\n' "$TUSER"
    printf 'export CLUSTRIX_TEST_SSH_KEY=%q\n' "$KEY"
    printf 'export CLUSTRIX_TEST_KNOWN_HOSTS=%q\n' "$KNOWN_HOSTS"
    login_env
}

main() {
    case "${1:-}" in
        start) cmd_start ;;
        stop) cmd_stop ;;
        status) cmd_status ;;
        env) cmd_env ;;
        drop-ssh) cmd_drop_ssh "${2:-0}" ;;
        start-login) need_root start-login; start_login_sshds ;;   # after start
        stop-login) need_root stop-login; stop_login_sshds ;;
        restart-slurmd) shift; cmd_restart_slurmd "$@" ;;
        start-sge) need_root start-sge; start_sge ;;
        stop-sge) need_root stop-sge; stop_sge; step "sge stopped" ;;
        restart-execd) shift; cmd_restart_execd "$@" ;;
        *) echo "usage: $0 start|stop|status|env|drop-ssh [down_s]|restart-slurmd [down_s [jobid...]]|start-sge|stop-sge|restart-execd [down_s [jobid...]]" >&2
           exit 2 ;;
    esac
}

main "$@"
