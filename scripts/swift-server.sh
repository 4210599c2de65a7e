#!/bin/bash
# The second S3 server of the tests: OpenStack Swift with its s3api
# middleware (Debian's packages), one node on 127.0.0.1:7580, every part
# under /tmp/s3chain-swift.  "start" runs memcached (tempauth keeps
# tokens there), the account, container and object servers and the proxy
# without systemd, creates the bucket s3chain-test and writes
# /tmp/s3chain-swift/s3.env in the shape scripts/s3-server.sh writes its
# own, so that a test suite runs against either.  Idempotent; "stop"
# ends only the processes it started; "rgw-stop" and "rgw-start" end and
# restart its proxy alone, "rgw-pause" and "rgw-resume" freeze and thaw
# it (SIGSTOP), as the other script does its radosgw.
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail
. "$(dirname "$0")/common.sh"

DIR=${S3CHAIN_SWIFT_DIR:-/tmp/s3chain-swift}
PORT=7580
MEMCACHED_PORT=7589
ENV_FILE=$DIR/s3.env
# tempauth's user test:tester; s3api takes "ACCOUNT:USER" as access key
ACCESS_KEY=test:tester
SECRET_KEY=testing
SERVERS=(memcached account container object proxy)
declare -A SERVER_PORT=([account]=7582 [container]=7581 [object]=7583)

answers() {
    curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$PORT/healthcheck"
}

write_configs() {
    mkdir -p "$DIR/etc" "$DIR/srv/d1" "$DIR/log" "$DIR/run"
    cat >"$DIR/etc/swift.conf" <<EOF
[swift-hash]
swift_hash_path_suffix = s3chain-test
swift_hash_path_prefix = s3chain

[storage-policy:0]
name = Policy-0
default = yes
EOF
    local common="[DEFAULT]
bind_ip = 127.0.0.1
workers = 0
user = $(id -un)
swift_dir = $DIR/etc
devices = $DIR/srv
mount_check = false
log_level = WARNING
log_udp_host = 127.0.0.1
log_udp_port = 9"
    for server in account container object; do
        cat >"$DIR/etc/$server-server.conf" <<EOF
$common
bind_port = ${SERVER_PORT[$server]}

[pipeline:main]
pipeline = $server-server

[app:$server-server]
use = egg:swift#$server
EOF
    done
    # s3api's multipart uploads need slo; tempauth needs memcache
    local plain_filters="catch_errors gatekeeper healthcheck proxy_logging
                         listing_formats copy slo dlo"
    cat >"$DIR/etc/proxy-server.conf" <<EOF
$common
bind_port = $PORT

[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy_logging cache listing_formats s3api tempauth copy slo dlo proxy_logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true

[filter:s3api]
use = egg:swift#s3api
location = us-east-1

[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = $SECRET_KEY .admin

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:$MEMCACHED_PORT
EOF
    # the filters that take no settings: each the egg of its name
    for filter in $plain_filters; do
        printf '\n[filter:%s]\nuse = egg:swift#%s\n' "$filter" "$filter"
    done >>"$DIR/etc/proxy-server.conf"
    for server in account container object; do
        local builder=$DIR/etc/$server.builder
        [ -f "$DIR/etc/$server.ring.gz" ] && continue
        swift-ring-builder "$builder" create 4 1 1 >/dev/null
        swift-ring-builder "$builder" add --region 1 --zone 1 \
            --ip 127.0.0.1 --port "${SERVER_PORT[$server]}" --device d1 \
            --weight 1 >/dev/null
        swift-ring-builder "$builder" rebalance >/dev/null || true
    done
}

start_one() {
    local name=$1
    local pidfile=$DIR/run/$name.pid
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        return 0
    fi
    case $name in
    memcached)
        setsid memcached -l 127.0.0.1 -p "$MEMCACHED_PORT" -U 0 -m 64 \
            -u "$(id -un)" \
            </dev/null >"$DIR/log/$name.log" 2>&1 &
        ;;
    *)
        setsid "swift-$name-server" "$DIR/etc/$name-server.conf" \
            </dev/null >"$DIR/log/$name.log" 2>&1 &
        ;;
    esac
    echo $! >"$pidfile"
}

start() {
    write_configs
    for name in "${SERVERS[@]}"; do
        start_one "$name"
    done
    for _ in $(seq 150); do
        answers && break
        sleep 0.2
    done
    answers || { tail -20 "$DIR"/log/*.log >&2; echo "swift did not start" >&2; exit 1; }
    (umask 077 && cat >"$ENV_FILE" <<EOF
S3CHAIN_ENDPOINT=http://127.0.0.1:$PORT
S3CHAIN_BUCKET=s3chain-test
AWS_ACCESS_KEY_ID=$ACCESS_KEY
AWS_SECRET_ACCESS_KEY=$SECRET_KEY
AWS_REGION=us-east-1
S3CHAIN_S3_CTL=$REPO/scripts/swift-server.sh
S3CHAIN_S3_DIR=$DIR
S3CHAIN_S3_KIND=swift
EOF
    )
    python3 -c "
import sys; sys.path.insert(0, '$REPO/scripts')
import s3obj
env = s3obj.load_env('$ENV_FILE')
c = s3obj.client(env)
try:
    c.create_bucket(Bucket=env['S3CHAIN_BUCKET'])
except c.exceptions.BucketAlreadyOwnedByYou:
    pass
"
    echo "$ENV_FILE"
}

stop() {
    for name in "${SERVERS[@]}"; do
        local pidfile=$DIR/run/$name.pid
        if [ -f "$pidfile" ]; then
            kill "$(cat "$pidfile")" 2>/dev/null || true
            rm -f "$pidfile"
        fi
    done
}

# The front of the server down and up, for fault tests: the names are
# scripts/s3-server.sh's, which the tests call
proxy_stop() {
    local pidfile=$DIR/run/proxy.pid
    [ -f "$pidfile" ] && kill -9 "$(cat "$pidfile")" 2>/dev/null
    rm -f "$pidfile"
}

proxy_start() {
    start_one proxy
    for _ in $(seq 150); do
        answers && return 0
        sleep 0.2
    done
    echo "swift's proxy did not start" >&2
    return 1
}

case ${1:-} in
start) start ;;
stop) stop ;;
rgw-stop) proxy_stop ;;
rgw-start) proxy_start ;;
rgw-pause) kill -STOP "$(cat "$DIR/run/proxy.pid")" ;;
rgw-resume) kill -CONT "$(cat "$DIR/run/proxy.pid")" ;;
*) echo "usage: $0 start|stop|rgw-stop|rgw-start|rgw-pause|rgw-resume" >&2
   exit 2 ;;
esac
