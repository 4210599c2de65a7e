#!/bin/bash
# A real S3 server for tests and benchmarks: a single-node Ceph cluster
# (one mon, one OSD, radosgw) on 127.0.0.1, with one user and one bucket.
#
#   s3-server.sh start      start it, or find it running (idempotent)
#   s3-server.sh stop       end the processes it started, and remove its data
#   s3-server.sh rgw-stop   end radosgw only (for fault tests)
#   s3-server.sh rgw-start  start radosgw again
#   s3-server.sh rgw-pause  freeze radosgw (SIGSTOP): it stalls, connections
#                           stay open (for fault tests)
#   s3-server.sh rgw-resume thaw it
#   s3-server.sh env        print the env file's path
#
# Settings from the environment:
#   S3CHAIN_S3_DIR     where it keeps everything (default /tmp/s3chain-s3;
#                      keep it short: unix socket paths are limited)
#   S3CHAIN_S3_PORT    radosgw's port (default 7480)
#   S3CHAIN_S3_TLS_PORT  its HTTPS port (default 7443), with a certificate
#                      for 127.0.0.1 signed by a CA made for it
#   S3CHAIN_S3_MON_PORTS the monitor's msgr2 and msgr1 ports (default
#                      "3300 6789"): a second server, in a directory of
#                      its own, needs other ports for all three
#   S3CHAIN_S3_STORE   memstore (default, all in RAM) or bluestore (a
#                      sparse file in S3CHAIN_S3_DIR)
#   S3CHAIN_S3_BYTES   the OSD's capacity (default: 16G for bluestore; for
#                      memstore 1T, only a ceiling for its accounting)
#
# A server remembers its settings (in S3CHAIN_S3_DIR/settings): the
# commands after start need only S3CHAIN_S3_DIR.
#
# The env file (mode 0600) has S3CHAIN_ENDPOINT, S3CHAIN_BUCKET,
# AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, S3CHAIN_S3_CTL,
# and S3CHAIN_TLS_ENDPOINT with S3CHAIN_TLS_CA, the CA's certificate.
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail

DIR=${S3CHAIN_S3_DIR:-/tmp/s3chain-s3}
SETTINGS=$DIR/settings
if [ "${1:-}" != start ] && [ -f "$SETTINGS" ]; then
    # shellcheck disable=SC1090
    . "$SETTINGS"
fi
PORT=${S3CHAIN_S3_PORT:-7480}
TLS_PORT=${S3CHAIN_S3_TLS_PORT:-7443}
read -r MON_PORT MON_V1_PORT <<<"${S3CHAIN_S3_MON_PORTS:-3300 6789}"
STORE=${S3CHAIN_S3_STORE:-memstore}
# A test run that wrote more than memstore's capacity in all saw the OSD
# marked full (and every upload stall) with five objects stored and the
# OSD holding 1 GiB of RAM: what ran out was memstore's accounting, not
# memory.  For memstore the capacity is only that ceiling.
if [ "$STORE" = memstore ]; then
    BYTES=${S3CHAIN_S3_BYTES:-1T}
else
    BYTES=${S3CHAIN_S3_BYTES:-16G}
fi
CONF=$DIR/ceph.conf
ENV_FILE=$DIR/s3.env
BUCKET=s3chain-test
SELF=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")

ceph_cmd() {
    timeout 20 ceph -c "$CONF" "$@"
}

log() {
    echo "s3-server: $*" >&2
}

alive() {
    local pidfile=$DIR/$1.pid
    [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

# Runs a daemon in the foreground of a background job, so its PID is ours
spawn() {
    local name=$1
    shift
    setsid "$@" -f -c "$CONF" >"$DIR/log/$name.out" 2>&1 </dev/null &
    echo $! >"$DIR/$name.pid"
}

rgw_answers() {
    curl -s -o /dev/null -m 2 "http://127.0.0.1:$PORT/" &&
        curl -s -o /dev/null -m 2 --cacert "$DIR/tls/ca.pem" "https://127.0.0.1:$TLS_PORT/"
}

wait_for() {
    local what=$1 tries=$2
    shift 2
    for _ in $(seq "$tries"); do
        if "$@"; then
            return 0
        fi
        sleep 0.2
    done
    log "$what did not come up; see $DIR/log"
    tail -20 "$DIR"/log/*.log "$DIR"/log/*.out >&2 2>/dev/null || true
    return 1
}

bytes_of() {
    numfmt --from=iec "$1"
}

# A CA of its own, and its certificate for radosgw at 127.0.0.1
make_certificates() {
    local tls=$DIR/tls
    mkdir -p "$tls"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=s3chain-test-ca \
        -keyout "$tls/ca.key" -out "$tls/ca.pem" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 \
        -keyout "$tls/server.key" -out "$tls/server.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$tls/san.ext"
    openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" \
        -CAcreateserial -days 3650 -extfile "$tls/san.ext" -out "$tls/server.pem" 2>/dev/null
    chmod 600 "$tls"/*.key
}

write_conf() {
    local fsid=$1
    cat >"$CONF" <<CONF
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$MON_PORT,v1:127.0.0.1:$MON_V1_PORT]
auth cluster required = none
auth service required = none
auth client required = none
ms_mon_client_mode = crc
run dir = $DIR/run
admin socket = $DIR/run/\$name.asok
log file = $DIR/log/\$name.log
mon data = $DIR/mon/\$cluster-\$id
osd data = $DIR/osd/\$cluster-\$id
osd objectstore = $STORE
memstore device bytes = $(bytes_of "$BYTES")
bluestore block path = $DIR/osd/block
bluestore block create = true
bluestore block size = $(bytes_of "$BYTES")
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon max pg per osd = 1000
mon data avail warn = 2
mon data avail crit = 1
paxos propose interval = 0.1
paxos min wait = 0.01
osd memory target = 1G
debug ms = 0

[client.rgw.local]
rgw frontends = beast endpoint=127.0.0.1:$PORT ssl_endpoint=127.0.0.1:$TLS_PORT ssl_certificate=$DIR/tls/server.pem ssl_private_key=$DIR/tls/server.key tcp_nodelay=1
rgw data = $DIR/rgw
rgw thread pool size = 64
rgw enable usage log = false
# Deleted objects' data is reclaimed by radosgw's garbage collector, two
# hours later by default: benchmarks that write gigabytes again and again
# would fill the OSD, and a full OSD stalls every write.
rgw gc obj min wait = 5
rgw gc processor period = 5
rgw gc processor max time = 5
CONF
}

start_rgw() {
    mkdir -p "$DIR/rgw"
    spawn rgw radosgw -n client.rgw.local
    wait_for radosgw 300 rgw_answers
}

stop_pid() {
    local name=$1 pidfile=$DIR/$1.pid
    if alive "$name"; then
        local pid
        pid=$(cat "$pidfile")
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

# What the commands after start need to find this server again
write_settings() {
    cat >"$SETTINGS" <<SETTINGS
S3CHAIN_S3_PORT=$PORT
S3CHAIN_S3_TLS_PORT=$TLS_PORT
S3CHAIN_S3_MON_PORTS="$MON_PORT $MON_V1_PORT"
S3CHAIN_S3_STORE=$STORE
S3CHAIN_S3_BYTES=$BYTES
SETTINGS
}

write_env() {
    local access=$1 secret=$2
    (
        umask 077
        cat >"$ENV_FILE" <<ENV
S3CHAIN_ENDPOINT=http://127.0.0.1:$PORT
S3CHAIN_TLS_ENDPOINT=https://127.0.0.1:$TLS_PORT
S3CHAIN_TLS_CA=$DIR/tls/ca.pem
S3CHAIN_BUCKET=$BUCKET
AWS_ACCESS_KEY_ID=$access
AWS_SECRET_ACCESS_KEY=$secret
AWS_REGION=us-east-1
S3CHAIN_S3_CTL=$SELF
S3CHAIN_S3_DIR=$DIR
ENV
    )
}

make_bucket() {
    # shellcheck disable=SC1090
    . "$ENV_FILE"
    S3CHAIN_ENDPOINT=$S3CHAIN_ENDPOINT AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID \
    AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY python3 - "$BUCKET" <<'PY'
import os, sys, boto3, botocore
s3 = boto3.client('s3', endpoint_url=os.environ['S3CHAIN_ENDPOINT'],
                  region_name='us-east-1')
try:
    s3.create_bucket(Bucket=sys.argv[1])
except botocore.exceptions.ClientError as e:
    if e.response['Error']['Code'] not in ('BucketAlreadyOwnedByYou',
                                           'BucketAlreadyExists'):
        raise
PY
}

start() {
    if alive mon && alive osd && alive rgw && rgw_answers && [ -f "$ENV_FILE" ] &&
       grep -q S3CHAIN_TLS_ENDPOINT "$ENV_FILE"; then
        echo "$ENV_FILE"
        return 0
    fi
    stop_all
    for tool in ceph-mon ceph-osd radosgw radosgw-admin; do
        command -v "$tool" >/dev/null || {
            log "$tool is missing; run scripts/install-deps.sh"
            exit 1
        }
    done
    mkdir -p "$DIR"/{run,log,mon,osd/ceph-0}
    write_settings
    local fsid
    fsid=$(cat /proc/sys/kernel/random/uuid)
    make_certificates
    write_conf "$fsid"

    monmaptool --create --fsid "$fsid" \
        --addv a "[v2:127.0.0.1:$MON_PORT,v1:127.0.0.1:$MON_V1_PORT]" \
        "$DIR/monmap" >/dev/null
    ceph-mon --mkfs -i a --monmap "$DIR/monmap" -c "$CONF" \
        >"$DIR/log/mon-mkfs.out" 2>&1
    spawn mon ceph-mon -i a
    wait_for ceph-mon 150 ceph_cmd -s --connect-timeout 2 >/dev/null

    local osd_uuid
    osd_uuid=$(cat /proc/sys/kernel/random/uuid)
    ceph_cmd osd new "$osd_uuid" >/dev/null
    ceph-osd -i 0 --mkfs --osd-uuid "$osd_uuid" -c "$CONF" \
        >"$DIR/log/osd-mkfs.out" 2>&1
    spawn osd ceph-osd -i 0
    wait_for ceph-osd 300 sh -c "timeout 5 ceph -c '$CONF' osd dump 2>/dev/null | grep -q '^osd.0 up'"

    start_rgw

    local access secret
    access=$(od -An -tx1 -N10 /dev/urandom | tr -d ' \n' | tr a-f A-F)
    secret=$(od -An -tx1 -N20 /dev/urandom | tr -d ' \n')
    timeout 60 radosgw-admin -c "$CONF" user create --uid=s3chain \
        --display-name=s3chain --access-key="$access" --secret="$secret" \
        >/dev/null
    write_env "$access" "$secret"
    make_bucket
    echo "$ENV_FILE"
}

stop_all() {
    for name in rgw osd mon; do
        stop_pid "$name"
    done
    case "$DIR" in
    /tmp/*|/run/*|/var/tmp/*|/dev/shm/*) rm -rf "$DIR" ;;
    *) rm -rf "${DIR:?}"/{run,log,mon,osd,rgw} "$CONF" "$ENV_FILE" "$DIR/monmap" \
           "$SETTINGS" ;;
    esac
}

case "${1:-}" in
start) start ;;
stop) stop_all ;;
rgw-stop) stop_pid rgw ;;
rgw-start) alive rgw || start_rgw ;;
rgw-pause) kill -STOP "$(cat "$DIR/rgw.pid")" ;;
rgw-resume) kill -CONT "$(cat "$DIR/rgw.pid")" ;;
env) echo "$ENV_FILE" ;;
*) echo "usage: s3-server.sh start|stop|rgw-stop|rgw-start|rgw-pause|rgw-resume|env" >&2
   exit 2 ;;
esac
