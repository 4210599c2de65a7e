"""What the benchmarks that drive a VM share: the build's paths, QEMU's
python package on the import path, the bucket and the processes'
environment, a stock qemu-system with one scsi-hd disk (vd0), a guest
that writes through HMP's qemu-io, a libvirt domain whose guest writes
all the time, changes made by qemu-io on a shut-off qcow2, the sidecar,
`s3chain backup`, the OADP temp-volume pipeline, and the CPU time of
processes."""

# SPDX-License-Identifier: GPL-2.0-or-later
import json
import os
import random
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get('S3CHAIN_BUILD', os.path.join(REPO, 'build'))
sys.path.insert(0, os.path.join(BUILD, 'qemu-src', 'python'))
sys.path.insert(0, os.path.join(REPO, 'scripts'))

# pylint: disable=wrong-import-position
from qemu.machine import QEMUMachine  # noqa: E402
import s3obj  # noqa: E402
from boto3.s3.transfer import TransferConfig  # noqa: E402

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
                             S3CHAIN_QSD=QSD, S3CHAIN_QEMU_IMG=QEMU_IMG,
                             **extra_env)

    def start_sidecar(self, trace_events=()):
        """Starts qsd-config/s3chain-sidecar, tracing @trace_events into
        WORK/sidecar.trace; returns its runtime directory and QMP socket"""
        runtime = os.path.join(self.work, 'run')
        env = dict(self.proc_env, S3CHAIN_RUNTIME_DIR=runtime)
        if trace_events:
            events = os.path.join(self.work, 'trace-events')
            with open(events, 'w', encoding='ascii') as f:
                f.write('\n'.join(trace_events) + '\n')
            self.sidecar_trace = os.path.join(self.work, 'sidecar.trace')
            env['S3CHAIN_QSD_TRACE'] = (f'events={events},'
                                        f'file={self.sidecar_trace}')
        self.sidecar = subprocess.Popen(
            [os.path.join(REPO, 'qsd-config', 's3chain-sidecar')], env=env)
        qmp = os.path.join(runtime, 'qsd.qmp')
        while not os.path.exists(qmp):
            time.sleep(0.05)
        return runtime, qmp

    def stop_sidecar(self):
        self.sidecar.terminate()
        self.sidecar.wait()

    def sidecar_peak_rss(self):
        with open(f'/proc/{self.sidecar.pid}/status', encoding='ascii') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) * 1024
        return 0

    def s3chain_backup(self, runtime, qmp, repo, *args):
        """`s3chain backup` of the VM 'bench' (QMP on WORK/vm.qmp) into
        @repo through the sidecar; returns its wall seconds, CPU seconds
        and JSON result"""
        start = time.monotonic()
        proc = subprocess.Popen(
            [S3CHAIN, 'backup', '--vm', 'bench', '--qmp',
             f'{self.work}/vm.qmp', '--repo', repo, '--sidecar-qmp', qmp,
             '--runtime-dir', runtime, '--json', '--progress', 'none',
             *args], env=self.proc_env, stdout=subprocess.PIPE, text=True)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        took = time.monotonic() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            raise RuntimeError(f's3chain backup failed: {out}')
        return (took, usage.ru_utime + usage.ru_stime,
                json.loads(out.splitlines()[-1]))

    def stored_bytes(self, prefix):
        """Bytes of the objects under @prefix"""
        total = 0
        pages = self.s3.get_paginator('list_objects_v2').paginate(
            Bucket=self.bucket, Prefix=prefix)
        for page in pages:
            total += sum(o['Size'] for o in page.get('Contents', []))
        return total

    def upload(self, path, key):
        """A parallel multipart upload of @path, as boto3 does it by
        default for a data mover (8 MiB parts, 8 threads)"""
        self.s3.upload_file(path, self.bucket, key, Config=TransferConfig(
            multipart_chunksize=8 * MiB, max_concurrency=8))

    def oadp(self, vm, size, key, bitmap):
        """The OADP temp-volume pipeline: blockdev-backup of @bitmap's
        blocks into a local qcow2, then an upload of it; returns its
        seconds and the local bytes it staged"""
        temp = os.path.join(self.work, 'oadp.qcow2')
        start = time.monotonic()
        subprocess.run([QEMU_IMG, 'create', '-q', '-f', 'qcow2', temp,
                        str(size)], check=True)
        vm.cmd('blockdev-add', driver='qcow2', node_name='oadp',
               file={'driver': 'file', 'filename': temp})
        vm.cmd('blockdev-backup', job_id='oadp', device='disk0',
               target='oadp', sync='incremental', bitmap=bitmap)
        vm.event_wait('BLOCK_JOB_COMPLETED', timeout=600,
                      match={'data': {'device': 'oadp'}})
        vm.cmd('blockdev-del', node_name='oadp')
        local = os.path.getsize(temp)
        self.upload(temp, key)
        took = time.monotonic() - start
        os.remove(temp)
        return took, local


def oadp_bitmap(vm):
    """A bitmap 'oadp-bitmap' on vd0's node with the changes that the
    checkpoint bitmap of s3chain's last backup holds, for the OADP
    pipeline to copy the same blocks"""
    bitmap = [b['name'] for n in vm.cmd('query-named-block-nodes', flat=True)
              if n['node-name'] == 'disk0'
              for b in n.get('dirty-bitmaps', [])][0]
    vm.cmd('block-dirty-bitmap-add', node='disk0', name='oadp-bitmap')
    vm.cmd('block-dirty-bitmap-merge', node='disk0', target='oadp-bitmap',
           bitmaps=[bitmap])
    return 'oadp-bitmap'


def read_bytes(pid):
    """Bytes process @pid has read, from the page cache or not"""
    with open(f'/proc/{pid}/io', encoding='ascii') as f:
        for line in f:
            if line.startswith('rchar:'):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid):
    """User and system CPU seconds process @pid has used, its threads'
    included"""
    with open(f'/proc/{pid}/stat', encoding='ascii') as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


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


def dirty_image(image, disk_size, amount, seed):
    """@amount bytes of the qcow2 @image rewritten by qemu-io in 1 MiB
    pieces, the same for the same @seed; its persistent bitmaps record
    them"""
    rnd = random.Random(seed)
    cmds = []
    for _ in range(amount // MiB):
        off = rnd.randrange(0, disk_size // MiB) * MiB
        cmds += ['-c', f'write -P {rnd.randrange(1, 255)} {off} 1M']
    subprocess.run([QEMU_IMG.replace('qemu-img', 'qemu-io'), '-f', 'qcow2',
                    *cmds, image], check=True, stdout=subprocess.DEVNULL)


def define_domain(work, domain, image):
    """A libvirt domain with the qcow2 @image as vda, whose guest (the
    tests' writer, tests/guest/writer.c) writes a 64 KiB record every
    20 ms to vda and to a small raw vdb in turn, so that backups have a
    scratch to keep"""
    kernel = os.path.join(REPO, 'build', 'guest', 'vmlinuz')
    initrd = os.path.join(REPO, 'build', 'guest', 'initramfs.img')
    xml = os.path.join(work, f'{domain}.xml')
    second = os.path.join(work, f'{domain}-vdb.raw')
    with open(second, 'wb') as f:
        f.truncate(64 * MiB)
    os.chmod(second, 0o666)
    with open(xml, 'w', encoding='ascii') as f:
        f.write(f'''<domain type='qemu'>
  <name>{domain}</name>
  <memory unit='MiB'>256</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel><initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 quiet s3w.delay=20</cmdline></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{image}'/><target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{second}'/><target dev='vdb' bus='virtio'/>
    </disk>
    <memballoon model='none'/>
  </devices>
</domain>
''')
    subprocess.run(['virsh', '-q', '-c', 'qemu:///system', 'define', xml],
                   check=True, stdout=subprocess.DEVNULL)


def dirty(vm, disk_size, amount, rnd):
    """The guest rewrites @amount bytes of vd0 in 1 MiB pieces at places
    and with patterns drawn from @rnd"""
    for _ in range(amount // MiB):
        off = rnd.randrange(0, disk_size // MiB) * MiB
        hmp(vm, f'qemu-io -d vd0 "write -P {rnd.randrange(1, 255)} {off} 1M"')
