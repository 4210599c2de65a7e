"""What the benchmarks that drive a VM share: the build's paths, QEMU's
python package on the import path, the bucket and the processes'
environment, a stock qemu-system with one scsi-hd disk (vd0), and a guest
that writes through HMP's qemu-io."""

# SPDX-License-Identifier: GPL-2.0-or-later
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get('S3CHAIN_BUILD', os.path.join(REPO, 'build'))
sys.path.insert(0, os.path.join(BUILD, 'qemu-src', 'python'))
sys.path.insert(0, os.path.join(REPO, 'scripts'))

# pylint: disable=wrong-import-position
from qemu.machine import QEMUMachine  # noqa: E402
import s3obj  # noqa: E402

MiB = 1024 * 1024
GiB = 1024 * MiB
S3CHAIN = os.path.join(BUILD, 'orchestrator', 's3chain')
QEMU_BUILD = os.path.join(BUILD, 'qemu')
QEMU_IMG = os.path.join(QEMU_BUILD, 'qemu-img')
QSD = os.path.join(QEMU_BUILD, 'storage-daemon', 'qemu-storage-daemon')


class BucketBench:
    """A benchmark against the local radosgw: its env file's settings, an
    S3 client, the bucket, and the environment of the processes it runs
    (the bucket's keys, our qemu-storage-daemon, and @extra_env)"""

    def __init__(self, env_file, work, prefix, **extra_env):
        self.env = s3obj.load_env(env_file)
        self.work = work
        self.prefix = prefix
        self.s3 = s3obj.client(self.env)
        self.bucket = self.env['S3CHAIN_BUCKET']
        self.proc_env = dict(os.environ,
                             AWS_ACCESS_KEY_ID=self.env['AWS_ACCESS_KEY_ID'],
                             AWS_SECRET_ACCESS_KEY=self.env[
                                 'AWS_SECRET_ACCESS_KEY'],
                             AWS_ENDPOINT_URL=self.env['S3CHAIN_ENDPOINT'],
                             S3CHAIN_QSD=QSD, **extra_env)


def start_vm(work, disk, fmt):
    """Debian's qemu-system with @disk (format @fmt) as vd0, QMP on
    WORK/vm.qmp for `s3chain backup`; no guest OS runs"""
    vm = QEMUMachine(
        '/usr/bin/qemu-system-x86_64',
        args=['-nodefaults', '-display', 'none', '-accel', 'tcg',
              '-qmp', f'unix:{work}/vm.qmp,server=on,wait=off',
              '-device', 'virtio-scsi-pci,id=scsi0',
              '-blockdev', f'driver={fmt},node-name=disk0,'
                           f'file.driver=file,file.filename={disk}',
              '-device', 'scsi-hd,id=vd0,drive=disk0'],
        base_temp_dir=work)
    vm.launch()
    return vm


def hmp(vm, line):
    out = vm.cmd('human-monitor-command', command_line=line)
    assert 'failed' not in out and 'rror' not in out, out


def dirty(vm, disk_size, amount, rnd):
    """The guest rewrites @amount bytes of vd0 in 1 MiB pieces at places
    and with patterns drawn from @rnd"""
    for _ in range(amount // MiB):
        off = rnd.randrange(0, disk_size // MiB) * MiB
        hmp(vm, f'qemu-io -d vd0 "write -P {rnd.randrange(1, 255)} {off} 1M"')
