#!/usr/bin/env python3
# Builds the tests' tiny Linux guest into build/guest/: Debian's cloud
# kernel (unpacked from its package, never installed on the host) and an
# initramfs whose init is tests/guest/writer.c, built static, beside the
# modules it loads and the guest agent of s3chain's QEMU build (qemu-ga,
# with the host's libraries it links).  Prints the directory.
#
# Copyright (c) 2026 The s3chain authors
#
# SPDX-License-Identifier: GPL-2.0-or-later

import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get('S3CHAIN_BUILD', os.path.join(REPO, 'build'))
OUT = os.path.join(BUILD, 'guest')
QEMU_GA = os.path.join(BUILD, 'qemu', 'qga', 'qemu-ga')
WRITER = os.path.join(REPO, 'tests', 'guest', 'writer.c')
MODULES = ['virtio', 'virtio_ring', 'virtio_pci_legacy_dev',
           'virtio_pci_modern_dev', 'virtio_pci', 'virtio_blk', 'evdev',
           'button', 'virtio_console']


def kernel_package() -> str:
    """The package linux-image-cloud-amd64 stands for, here"""
    out = subprocess.run(['apt-cache', 'depends', 'linux-image-cloud-amd64'],
                         check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        line = line.strip()
        if line.startswith('Depends: linux-image-'):
            return line.split()[1]
    sys.exit('guest.py: apt knows no linux-image-cloud-amd64; '
             'run apt-get update')


def newc(entries) -> bytes:
    """A cpio archive in the newc format the kernel unpacks"""
    out = bytearray()
    ino = 1
    for name, mode, data in entries + [('TRAILER!!!', 0, b'')]:
        name_b = name.encode() + b'\0'
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0,
                  len(name_b), 0]
        out += b'070701' + b''.join(b'%08X' % f for f in fields)
        out += name_b
        out += b'\0' * (-len(out) % 4)
        out += data
        out += b'\0' * (-len(out) % 4)
        ino += 1
    return bytes(out)


def agent_entries() -> list:
    """qemu-ga at /bin/qemu-ga, and the libraries ldd finds for it"""
    if not os.path.exists(QEMU_GA):
        sys.exit(f'guest.py: no {QEMU_GA}; build QEMU first '
                 '(scripts/build.sh)')
    out = subprocess.run(['ldd', QEMU_GA], check=True, capture_output=True,
                         text=True).stdout
    libs = re.findall(r'(/\S+) \(0x', out)
    entries, dirs = [], {'bin'}
    for lib in libs:
        parts = lib.strip('/').split('/')
        for i in range(1, len(parts)):
            dirs.add('/'.join(parts[:i]))
    for d in sorted(dirs):
        entries.append((d, 0o40755, b''))
    for path, name in [(QEMU_GA, 'bin/qemu-ga')] + \
            [(lib, lib.strip('/')) for lib in libs]:
        with open(os.path.realpath(path), 'rb') as f:
            entries.append((name, 0o100755, f.read()))
    return entries


def main() -> None:
    package = kernel_package()
    agent = agent_entries()
    with open(WRITER, 'rb') as f:
        stamp = (package + ' '.join(MODULES) +
                 hashlib.sha256(f.read()).hexdigest() +
                 hashlib.sha256(b''.join(e[2] for e in agent)).hexdigest())
    stamp_file = os.path.join(OUT, 'stamp')
    if os.path.exists(stamp_file) and open(stamp_file).read() == stamp:
        print(OUT)
        return
    work = os.path.join(OUT, 'work')
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(work)
    subprocess.run(['apt-get', 'download', '-q', package], cwd=work,
                   check=True, stdout=subprocess.DEVNULL)
    deb = glob.glob(os.path.join(work, '*.deb'))[0]
    root = os.path.join(work, 'root')
    subprocess.run(['dpkg-deb', '-x', deb, root], check=True)
    vmlinuz = glob.glob(os.path.join(root, 'boot', 'vmlinuz-*'))[0]
    shutil.copy(vmlinuz, os.path.join(OUT, 'vmlinuz'))
    init = os.path.join(work, 'init')
    subprocess.run(['gcc', '-static', '-O2', '-Wall', '-Werror', '-o', init,
                    WRITER], check=True)
    entries = [('modules', 0o40755, b'')]
    with open(init, 'rb') as f:
        entries.append(('init', 0o100755, f.read()))
    for module in MODULES:
        path = glob.glob(os.path.join(root, 'lib', 'modules', '*', 'kernel',
                                      '**', module + '.ko'),
                         recursive=True)[0]
        with open(path, 'rb') as f:
            entries.append((f'modules/{module}.ko', 0o100644, f.read()))
    entries += agent
    with open(os.path.join(OUT, 'initramfs.img'), 'wb') as f:
        f.write(newc(entries))
    shutil.rmtree(work)
    with open(stamp_file, 'w') as f:
        f.write(stamp)
    print(OUT)


if __name__ == '__main__':
    main()
