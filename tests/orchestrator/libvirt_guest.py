# Real parts for the tests of s3chain's libvirt source: libvirtd (started
# without systemd when it isn't running, and stopped only then), a TCG
# domain with a qcow2 and a raw disk and a guest agent channel, and its
# tiny Linux guest (tests/guest/writer.c, with qemu-ga) writing records
# that the tests replay to know each disk's exact bytes at any backup's
# instant.
#
# Copyright (c) 2026 The s3chain authors
#
# SPDX-License-Identifier: GPL-2.0-or-later

import os
import re
import signal
import struct
import subprocess
import time
import uuid
from typing import Dict, List, Tuple

from harness import QEMU_IMG, REPO

URI = 'qemu:///system'
LIBVIRTD = os.path.join(REPO, 'scripts', 'libvirtd.sh')
GUEST_BUILD = os.path.join(REPO, 'scripts', 'guest.py')
MiB = 1024 * 1024
RECORD = 65536
MAGIC = b'S3CW'
# name: (format, size, bytes of random data before the guest starts)
DISKS = {'vda': ('qcow2', 96 * MiB, 64 * MiB),
         'vdb': ('raw', 32 * MiB, 8 * MiB)}
# the writer's disk index of each
DISK_INDEX = {'vda': 0, 'vdb': 1}


def virsh(*args: str, check: bool = True) -> str:
    res = subprocess.run(['virsh', '-q', '-c', URI, *args], text=True,
                         capture_output=True, timeout=120)
    if check and res.returncode:
        raise AssertionError(f'virsh {" ".join(args)}: {res.stderr}')
    return res.stdout


def libvirtd(action: str) -> None:
    subprocess.run([LIBVIRTD, action], check=True)


def guest_files() -> Tuple[str, str]:
    out = subprocess.run([GUEST_BUILD], check=True, capture_output=True,
                         text=True).stdout.strip()
    return os.path.join(out, 'vmlinuz'), os.path.join(out, 'initramfs.img')


def block_of(seq: int, nblocks: int) -> int:
    x = ((seq + 1) * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x ^= x >> 31
    return x % nblocks


def record(seq: int, disk: int, offset: int) -> bytes:
    body = struct.pack('<Q', seq) * (RECORD // 8)
    return MAGIC + struct.pack('<IQQ', disk, seq, offset) + body[24:]


def last_record(images: Dict[str, bytes], since: int) -> int:
    """The highest record number from @since on in any of the images"""
    last = since - 1
    for image in images.values():
        for off in range(0, len(image), RECORD):
            if image[off:off + 4] == MAGIC:
                seq = struct.unpack_from('<Q', image, off + 8)[0]
                if seq >= since:
                    last = max(last, seq)
    return last


def replay(base: Dict[str, bytes], start: int, upto: int) -> Dict[str, bytes]:
    """The disks after the guest's records @start..@upto onto @base"""
    disks = {name: bytearray(data) for name, data in base.items()}
    names = sorted(DISK_INDEX, key=DISK_INDEX.get)
    for seq in range(start, upto + 1):
        name = names[seq % len(names)]
        nblocks = len(disks[name]) // RECORD
        off = block_of(seq, nblocks) * RECORD
        disks[name][off:off + RECORD] = record(seq, DISK_INDEX[name], off)
    return {name: bytes(data) for name, data in disks.items()}


class Domain:
    """A persistent TCG domain whose guest writes records to its disks"""

    def __init__(self, workdir: str, with_disks: bool = True) -> None:
        self.dir = workdir
        os.chmod(workdir, 0o755)
        self.uuid = str(uuid.uuid4())
        self.name = f's3c-{self.uuid[:8]}'
        self.console = os.path.join(workdir, 'console.log')
        self.kernel, self.initrd = guest_files()
        self.paths = {}
        self.base: Dict[str, bytes] = {}
        self.start_seq = 1
        if with_disks:
            for name, (fmt, size, filled) in DISKS.items():
                self.paths[name] = self.make_disk(name, fmt, size, filled)
        self.define()

    def make_disk(self, name: str, fmt: str, size: int, filled: int) -> str:
        raw = os.path.join(self.dir, f'{name}.base')
        data = bytearray(size)
        # random data in 1 MiB pieces, holes between them
        for off in range(0, min(size, filled * 2), 2 * MiB):
            data[off:off + MiB] = os.urandom(MiB)
        with open(raw, 'wb') as f:
            f.write(data)
        self.base[name] = bytes(data)
        path = os.path.join(self.dir, f'{name}.{fmt}')
        subprocess.run([QEMU_IMG, 'convert', '-q', '-f', 'raw', '-O', fmt,
                        raw, path], check=True)
        os.remove(raw)
        os.chmod(path, 0o666)
        return path

    def xml(self) -> str:
        disks = ''
        for name, path in self.paths.items():
            fmt = DISKS[name][0]
            disks += f'''
    <disk type='file' device='disk'>
      <driver name='qemu' type='{fmt}'/>
      <source file='{path}'/>
      <target dev='{name}' bus='virtio'/>
      <serial>SERIAL-{name}</serial>
    </disk>'''
        return f'''<domain type='qemu'>
  <name>{self.name}</name>
  <uuid>{self.uuid}</uuid>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{self.kernel}</kernel>
    <initrd>{self.initrd}</initrd>
    <cmdline>console=ttyS0 quiet s3w.start={self.start_seq} s3w.delay=5</cmdline>
  </os>
  <features>
    <acpi/>
  </features>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>{disks}
    <serial type='file'>
      <source path='{self.console}' append='on'/>
      <target port='0'/>
    </serial>
    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <memballoon model='none'/>
  </devices>
</domain>
'''

    def define(self) -> None:
        path = os.path.join(self.dir, 'domain.xml')
        with open(path, 'w') as f:
            f.write(self.xml())
        virsh('define', path)

    def start(self) -> None:
        """Boots the domain and waits until its guest writes and its agent
        answers (libvirt drops the agent's connection event when a backup
        job is running, as on a host where backups start at boot)"""
        seen = self.console_text().count('s3w: writing from')
        virsh('start', self.name)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if (self.console_text().count('s3w: writing from') > seen and
                    "guest_agent.0' state='connected'" in
                    virsh('dumpxml', self.name)):
                return
            time.sleep(0.2)
        raise AssertionError('the guest did not start writing, or its agent '
                             'did not connect: ' +
                             self.console_text()[-2000:])

    def console_text(self) -> str:
        try:
            with open(self.console, errors='replace') as f:
                return f.read()
        except FileNotFoundError:
            return ''

    def records_written(self) -> int:
        """The last record number the guest reported"""
        nums = re.findall(r's3w: record (\d+)', self.console_text())
        return int(nums[-1]) if nums else 0

    def write_failures(self) -> List[str]:
        return re.findall(r's3w: record \d+ to \S+ failed.*',
                          self.console_text())

    def destroy(self) -> None:
        virsh('destroy', self.name, check=False)

    def wait_shut_off(self, what: str) -> None:
        deadline = time.monotonic() + 120
        while virsh('domstate', self.name).strip() != 'shut off':
            if time.monotonic() > deadline:
                raise AssertionError(f'the domain outlived {what}: ' +
                                     self.console_text()[-2000:])
            time.sleep(0.2)

    def shutdown(self) -> None:
        """A clean shutdown: the guest powers off at the power button"""
        virsh('shutdown', '--mode', 'acpi', self.name)
        self.wait_shut_off('the power button')
        assert 'powering off' in self.console_text()

    def kill(self) -> None:
        """A crash: its QEMU killed"""
        with open(f'/run/libvirt/qemu/{self.name}.pid') as f:
            os.kill(int(f.read().strip()), signal.SIGKILL)
        self.wait_shut_off('SIGKILL of its QEMU')

    def start_again(self) -> None:
        """Starts it once more: the guest's records go on from its disks'"""
        images = self.images_now()
        self.base = images
        self.start_seq = last_record(images, self.start_seq) + 1000000
        self.define()
        self.start()

    def restart(self) -> None:
        """Off and on again: the guest's records go on from the disks'"""
        self.destroy()
        self.start_again()

    def images_now(self) -> Dict[str, bytes]:
        """The disks' bytes, read from their files (the domain is off)"""
        out = {}
        for name, path in self.paths.items():
            raw = os.path.join(self.dir, f'{name}.now')
            subprocess.run([QEMU_IMG, 'convert', '-U', '-O', 'raw', path,
                            raw], check=True)
            with open(raw, 'rb') as f:
                out[name] = f.read()
            os.remove(raw)
        return out

    def freezes(self) -> Tuple[int, int]:
        """How many freezes its guest agent did, and how many thaws"""
        text = self.console_text()
        return (text.count('"execute":"guest-fsfreeze-freeze"'),
                text.count('logging re-enabled due to filesystem unfreeze'))

    def frozen(self) -> str:
        """Why its agent refuses to list filesystems, as a frozen one
        does: '' when it answers"""
        res = subprocess.run(['virsh', '-q', '-c', URI, 'domfsinfo',
                              self.name], capture_output=True, text=True,
                             timeout=60)
        return res.stderr.strip() if res.returncode else ''

    def checkpoints(self) -> List[str]:
        return sorted(virsh('checkpoint-list', self.name, '--name').split())

    def log(self) -> str:
        try:
            with open(f'/var/log/libvirt/qemu/{self.name}.log') as f:
                return f.read()
        except FileNotFoundError:
            return ''

    def remove(self) -> None:
        self.destroy()
        virsh('undefine', self.name, '--checkpoints-metadata', check=False)
