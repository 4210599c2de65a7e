#!/bin/bash
# Installs every Debian package s3chain needs to build, test and benchmark.
#
# Adds deb-src and bookworm-backports entries when they are missing, because
# QEMU 10.0.2's source and the meson it needs only live in backports.
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail

SOURCES=/etc/apt/sources.list.d/s3chain.sources
if [ ! -f "$SOURCES" ]; then
    cat > "$SOURCES" <<'SRC'
Types: deb deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    rm -f /var/lib/apt/lists/lock
fi

export DEBIAN_FRONTEND=noninteractive
apt_stamp=/var/lib/apt/periodic/s3chain-update-stamp
if [ ! -f "$apt_stamp" ] || [ "$SOURCES" -nt "$apt_stamp" ]; then
    apt-get update -q
    mkdir -p "$(dirname "$apt_stamp")" && touch "$apt_stamp"
fi

build_pkgs=(
    build-essential pkg-config ninja-build git ca-certificates curl
    python3 python3-venv python3-setuptools
    libglib2.0-dev libpixman-1-dev libfdt-dev zlib1g-dev libzstd-dev
    libcurl4-openssl-dev libjson-c-dev libgnutls28-dev libfuse3-dev
    libnbd-dev flex bison dpkg-dev
)
# qemu-system-x86 10.0 is the stock VM of the tests: the VM's QEMU is
# never ours.  libvirt 11.3 matches it: the libvirt source builds against
# libvirt-dev, and its tests run a real libvirtd
backports_pkgs=(meson python3-pycotap qemu-system-x86
                libvirt-dev libvirt-daemon libvirt-daemon-driver-qemu
                libvirt-clients)
ceph_pkgs=(ceph-mon ceph-osd ceph-base ceph-common radosgw)
# the second S3 server of the tests: Swift with s3api (scripts/swift-server.sh)
swift_pkgs=(swift-proxy swift-account swift-container swift-object
            python3-swift memcached)
# fuse3 and e2fsprogs: a served backup mounted through a FUSE export;
# python3-libnbd: the stand-in of KubeVirt's export server reads NBD;
# python3-yaml: the example manifests are parsed and checked;
# openssl: the certificates of radosgw's TLS endpoint; clang and its
# runtime: the fuzzers (libFuzzer, ASan, UBSan)
test_pkgs=(python3-boto3 python3-libnbd python3-yaml jq xxd psmisc procps fuse3 e2fsprogs openssl
           clang libclang-rt-14-dev)

missing=()
for p in "${build_pkgs[@]}" "${backports_pkgs[@]}" "${ceph_pkgs[@]}" \
         "${swift_pkgs[@]}" "${test_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get install -y -q --no-install-recommends "${build_pkgs[@]}" \
        "${ceph_pkgs[@]}" "${swift_pkgs[@]}" "${test_pkgs[@]}"
    apt-get install -y -q --no-install-recommends -t bookworm-backports "${backports_pkgs[@]}"
fi
