#!/usr/bin/env python3
"""Resources of the sidecar during a backup into the bucket.

A stock qemu-system (CPUs stopped) runs blockdev-backup sync=full of an
8 GiB disk with 2 GiB of random data into an NBD export of our
qemu-storage-daemon, whose target is a qcow2 image on s3chain.  The
daemon's peak RSS (VmHWM) and the bytes it wrote to local storage
(write_bytes of /proc/PID/io) are sampled until it exits, after it
committed the image.

Usage: bench/backup-resources.py ENV_FILE QEMU_BUILD_DIR [BUFFER_MIB]
Prints one line of results; bench/backup-resources.sh runs it.
"""

# SPDX-License-Identifier: GPL-2.0-or-later

import json
import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'scripts'))
from s3obj import load_env  # noqa: E402  pylint: disable=wrong-import-position

MiB = 1 << 20
GiB = 1 << 30


class Sampler(threading.Thread):
    """Samples a process's peak RSS and local writes until it exits"""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_rss = 0
        self.write_bytes = 0

    def run(self):
        while True:
            try:
                with open(f'/proc/{self.pid}/status', encoding='utf-8') as f:
                    for line in f:
                        if line.startswith('VmHWM:'):
                            self.peak_rss = int(line.split()[1]) * 1024
                with open(f'/proc/{self.pid}/io', encoding='utf-8') as f:
                    for line in f:
                        if line.startswith('write_bytes:'):
                            self.write_bytes = int(line.split()[1])
            except (FileNotFoundError, ProcessLookupError):
                return
            time.sleep(0.05)


def main():
    env = load_env(sys.argv[1])
    build = sys.argv[2]
    buffer_mib = int(sys.argv[3]) if len(sys.argv) > 3 else 64
    sys.path.insert(0, os.path.join(build, '..', 'qemu-src', 'python'))
    # pylint: disable=import-outside-toplevel
    from qemu.qmp.legacy import QEMUMonitorProtocol

    work = tempfile.mkdtemp(prefix='s3chain-bench-', dir='/var/tmp')
    disk = os.path.join(work, 'disk.qcow2')
    subprocess.run([f'{build}/qemu-img', 'create', '-q', '-f', 'qcow2',
                    disk, '8G'], check=True)
    # 2 GiB of random data: 1 MiB in every 4 MiB
    raw = os.path.join(work, 'disk.raw')
    with open(raw, 'wb') as f:
        f.truncate(8 * GiB)
        for i in range(0, 8 * 1024, 4):
            f.seek(i * MiB)
            f.write(os.urandom(MiB))
    subprocess.run([f'{build}/qemu-img', 'convert', '-n', '-f', 'raw',
                    '-O', 'qcow2', raw, disk], check=True)
    os.remove(raw)

    secret = os.path.join(work, 'secret')
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, env['AWS_SECRET_ACCESS_KEY'].encode())
    os.close(fd)
    key = f'bench/resources-{os.getpid()}/full.qcow2'
    host = env['S3CHAIN_ENDPOINT'].split('://', 1)[1]
    url = (f's3chain://{host};tls=off;access-key-id={env["AWS_ACCESS_KEY_ID"]}'
           f';key-secret=s3key/{env["S3CHAIN_BUCKET"]}/{key}')
    subprocess.run([f'{build}/qemu-img', 'create', '-q', '--object',
                    f'secret,id=s3key,file={secret}', '-f', 'qcow2', url,
                    '8G'], check=True)

    # Sockets go where a sidecar keeps them, on tmpfs: binding one in a
    # disk file system writes its directory entry
    sockets = tempfile.mkdtemp(prefix='s3chain-bench-', dir='/dev/shm')
    nbd = os.path.join(sockets, 'nbd.sock')
    qsd_qmp = os.path.join(sockets, 'qsd.qmp')
    target = json.dumps({
        'driver': 'qcow2', 'node-name': 'target',
        'file': {'driver': 's3chain', 'endpoint': env['S3CHAIN_ENDPOINT'],
                 'bucket': env['S3CHAIN_BUCKET'], 'key': key,
                 'access-key-id': env['AWS_ACCESS_KEY_ID'],
                 'key-secret': 's3key', 'buffer-size': buffer_mib * MiB}})
    qsd = subprocess.Popen([  # pylint: disable=consider-using-with
        f'{build}/storage-daemon/qemu-storage-daemon',
        '--object', f'secret,id=s3key,file={secret}',
        '--blockdev', target,
        '--nbd-server', f'addr.type=unix,addr.path={nbd}',
        '--export', 'type=nbd,id=exp0,node-name=target,name=target,'
                    'writable=on',
        '--chardev', f'socket,id=m,path={qsd_qmp},server=on,wait=off',
        '--monitor', 'm'])
    sampler = Sampler(qsd.pid)
    sampler.start()

    vm_qmp = os.path.join(sockets, 'vm.qmp')
    vm = subprocess.Popen([  # pylint: disable=consider-using-with
        '/usr/bin/qemu-system-x86_64', '-S', '-nodefaults', '-display',
        'none', '-accel', 'tcg',
        '-blockdev', f'driver=qcow2,node-name=disk0,file.driver=file,'
                     f'file.filename={disk}',
        '-qmp', f'unix:{vm_qmp},server=on,wait=off'])
    try:
        measure(qsd, vm, sampler, nbd, vm_qmp, QEMUMonitorProtocol,
                buffer_mib, (build, disk, url, secret, key, work))
        subprocess.run(['rm', '-rf', sockets], check=True)
    finally:
        for proc in (qsd, vm):
            if proc.poll() is None:
                proc.kill()


def measure(qsd, vm, sampler, nbd, vm_qmp, QEMUMonitorProtocol, buffer_mib,
            paths):
    """Runs the backup and prints what it cost"""
    build, disk, url, secret, key, work = paths
    for path in (nbd, vm_qmp):
        while not os.path.exists(path):
            time.sleep(0.05)
    mon = QEMUMonitorProtocol(vm_qmp)
    mon.connect()
    mon.cmd('blockdev-add', **{'driver': 'nbd', 'node-name': 'nbd0',
                               'server': {'type': 'unix', 'path': nbd},
                               'export': 'target'})
    start = time.monotonic()
    mon.cmd('blockdev-backup', **{'device': 'disk0', 'target': 'nbd0',
                                  'sync': 'full', 'job-id': 'backup0'})
    while True:
        event = mon.pull_event(wait=True)
        if event['event'] == 'BLOCK_JOB_COMPLETED':
            break
    job_done = time.monotonic()
    mon.cmd('blockdev-del', **{'node-name': 'nbd0'})
    qsd.terminate()
    qsd.wait()
    committed = time.monotonic()
    sampler.join()
    mon.close()
    vm.terminate()
    vm.wait()

    subprocess.run([f'{build}/qemu-img', 'compare', '-q', '--object',
                    f'secret,id=s3key,file={secret}', disk, url], check=True)
    subprocess.run(['python3', os.path.join(os.path.dirname(__file__), '..',
                                            'scripts', 's3obj.py'),
                    sys.argv[1], 'rm-prefix', os.path.dirname(key) + '/'],
                   check=True)
    subprocess.run(['rm', '-rf', work], check=True)
    print(f'buffer-size {buffer_mib} MiB: backup {job_done - start:.1f} s, '
          f'commit {committed - job_done:.1f} s, '
          f'{2 * GiB / (committed - start) / 1e6:.0f} MB/s of data; '
          f'sidecar peak RSS {sampler.peak_rss / MiB:.0f} MiB '
          f'(limit {buffer_mib + 64} MiB), '
          f'local writes {sampler.write_bytes} bytes; restored image '
          f'compares equal')


if __name__ == '__main__':
    main()
