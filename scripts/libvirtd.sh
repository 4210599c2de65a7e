#!/bin/bash
# Starts or stops libvirtd (and virtlogd) without systemd, for the tests
# and the demo.  "start" prints nothing and exits 0 when libvirtd already
# answers; it writes the marker $STATE_DIR/started only when it started
# it, so that "stop" stops only what "start" started.
#   scripts/libvirtd.sh start|stop|restart|running
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail

STATE_DIR=${S3CHAIN_LIBVIRTD_STATE:-/run/s3chain-libvirtd}
URI=qemu:///system

running() {
    timeout 10 virsh -c "$URI" version >/dev/null 2>&1
}

# libvirt re-probes QEMU (some 30 s) whenever QEMU's probe finds KVM and
# /dev/kvm is not usable by QEMU's user, as in a container without udev
# (root:root 0600).  Give it the mode Debian's udev rules give it; "stop"
# puts the old one back.
kvm_as_debian() {
    [ -c /dev/kvm ] || return 0
    if [ ! -f "$STATE_DIR/kvm-mode" ]; then
        stat -c '%a %g' /dev/kvm >"$STATE_DIR/kvm-mode"
    fi
    chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
}

kvm_back() {
    local mode gid
    [ -f "$STATE_DIR/kvm-mode" ] || return 0
    read -r mode gid <"$STATE_DIR/kvm-mode"
    chgrp "$gid" /dev/kvm && chmod "$mode" /dev/kvm
    rm -f "$STATE_DIR/kvm-mode"
}

start_daemons() {
    mkdir -p /run/libvirt /var/log/libvirt/qemu "$STATE_DIR"
    kvm_as_debian
    pgrep -x virtlogd >/dev/null || virtlogd -d
    libvirtd -d
    for _ in $(seq 100); do
        running && return 0
        sleep 0.1
    done
    echo "libvirtd did not answer at $URI" >&2
    return 1
}

# libvirtd first: without virtlogd it was seen to ignore SIGTERM
stop_daemons() {
    local pid
    for name in libvirtd virtlogd; do
        pid=$(pgrep -x "$name" || true)
        [ -n "$pid" ] || continue
        kill $pid 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 $pid 2>/dev/null || break
            sleep 0.1
        done
        kill -9 $pid 2>/dev/null || true
    done
}

case "${1:-}" in
start)
    mkdir -p "$STATE_DIR"
    if ! running; then
        start_daemons
        touch "$STATE_DIR/started"
    fi
    ;;
stop)
    if [ -f "$STATE_DIR/started" ]; then
        stop_daemons
        rm -f "$STATE_DIR/started"
    fi
    kvm_back
    ;;
restart)
    # libvirtd alone: its domains keep running, as on a real host
    pid=$(pgrep -x libvirtd || true)
    [ -z "$pid" ] || kill -9 $pid
    for _ in $(seq 50); do
        pgrep -x libvirtd >/dev/null || break
        sleep 0.1
    done
    start_daemons
    ;;
running)
    running
    ;;
*)
    echo "usage: $0 start|stop|restart|running" >&2
    exit 2
    ;;
esac
