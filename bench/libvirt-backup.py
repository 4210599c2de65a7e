#!/usr/bin/env python3
"""Incremental backup of a libvirt domain's disk with 64 MiB and 1 GiB
dirty, three ways in the same run and against the same radosgw:

- s3chain --libvirt: libvirt's pull mode, the changed extents copied
  with libnbd through the sidecar into the bucket;
- virtnbdbackup (Debian's package) into a local directory, then that
  directory uploaded (boto3, 8 MiB parts, 8 threads), as a user of it
  with an S3 bucket must;
- s3chain over QMP, on a plain QEMU with a copy of the same disk and the
  same changes.

Each tool backs up its own copy of the disk: virtnbdbackup refuses a
domain that holds checkpoints it did not make, so it gets a domain of
its own.  The changes are made with the domains and the VM off, by
qemu-io on each qcow2, whose persistent bitmaps record them for the
tools' checkpoints; the domains' guests also write all the time (a 64 KiB
record every 20 ms, half of them to vda), which is what libvirt's
scratch holds during a backup.
Reports wall time, bytes uploaded, local bytes written, the scratch's
peak and the sidecar's peak RSS, for each round.
Usage: libvirt-backup.py ENV_FILE WORKDIR PREFIX ROUNDS DIRTY_MIB...
"""

# SPDX-License-Identifier: GPL-2.0-or-later
import json
import os
import random
import subprocess
import sys
import time
import uuid

from vmbench import (GiB, MiB, QEMU_IMG, REPO, S3CHAIN, BucketBench,
                     define_domain, dirty_image, start_vm)

# pylint: disable=wrong-import-position
from boto3.s3.transfer import TransferConfig  # noqa: E402

SIZE = 4 * GiB          # the disk
DATA = 1536 * MiB       # what it holds before the backups
URI = 'qemu:///system'


def virsh(*args):
    subprocess.run(['virsh', '-q', '-c', URI, *args], check=True,
                   stdout=subprocess.DEVNULL)


class Bench(BucketBench):
    def __init__(self, env_file, work, prefix):
        super().__init__(env_file, work, prefix)
        self.runtime = os.path.join(work, 'run')
        self.sidecar = None
        self.vm = None
        # each tool's copy of the disk, and the domain that runs it
        self.images = {t: os.path.join(work, f'{t}.qcow2')
                       for t in ('s3chain', 'virtnbdbackup', 'qmp')}
        tag = uuid.uuid4().hex[:8]
        self.domains = {'s3chain': f'bench-s3chain-{tag}',
                        'virtnbdbackup': f'bench-vnb-{tag}'}
        self.rnd = random.Random(7)

    # the disks

    def make_image(self):
        raw = os.path.join(self.work, 'base.raw')
        rnd = random.Random(1)
        with open(raw, 'wb') as f:
            f.truncate(SIZE)
            for _ in range(DATA // (16 * MiB)):
                f.seek(rnd.randrange(0, (SIZE - 16 * MiB) // MiB) * MiB)
                f.write(os.urandom(16 * MiB))
        for path in self.images.values():
            subprocess.run([QEMU_IMG, 'convert', '-q', '-O', 'qcow2', raw,
                            path], check=True)
            os.chmod(path, 0o666)
        os.remove(raw)
        os.chmod(self.work, 0o755)

    def start_sidecar(self):
        self.sidecar = subprocess.Popen(
            [os.path.join(REPO, 'qsd-config', 's3chain-sidecar')],
            env=dict(self.proc_env, S3CHAIN_RUNTIME_DIR=self.runtime),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        qmp = os.path.join(self.runtime, 'qsd.qmp')
        while not os.path.exists(qmp):
            time.sleep(0.05)
        return qmp

    def stop_sidecar(self):
        """The sidecar's peak RSS over its life"""
        rss = 0
        with open(f'/proc/{self.sidecar.pid}/status', encoding='ascii') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    rss = int(line.split()[1]) * 1024
        self.sidecar.terminate()
        self.sidecar.wait()
        qmp = os.path.join(self.runtime, 'qsd.qmp')
        if os.path.exists(qmp):
            os.remove(qmp)
        return rss

    # the tools

    def s3chain(self, source_args, repo):
        """A backup through a sidecar of its own: time, result, peak RSS"""
        qmp = self.start_sidecar()
        args = [S3CHAIN, 'backup', *source_args, '--repo', repo,
                '--sidecar-qmp', qmp, '--runtime-dir', self.runtime,
                '--json', '--progress', 'none']
        if '--libvirt' in source_args:
            args += ['--scratch-dir', self.work]
        start = time.monotonic()
        out = subprocess.run(args, env=self.proc_env, check=True,
                             capture_output=True, text=True)
        took = time.monotonic() - start
        return took, json.loads(out.stdout.splitlines()[-1]), \
            self.stop_sidecar()

    def virtnbdbackup(self, level, out_dir, key_prefix):
        """Into @out_dir, then what it wrote uploaded: time, local bytes"""
        before = {os.path.join(r, f) for r, _d, fs in os.walk(out_dir)
                  for f in fs}
        start = time.monotonic()
        res = subprocess.run(['virtnbdbackup', '-U', URI, '-d',
                              self.domains['virtnbdbackup'], '-i', 'vda',
                              '-l', level, '-o', out_dir, '-S', self.work,
                              '-n'], capture_output=True, text=True,
                             # it runs qemu-img info: the build's will do
                             env=dict(os.environ, PATH=os.path.dirname(
                                 QEMU_IMG) + ':' + os.environ['PATH']))
        if res.returncode:
            sys.exit(f'virtnbdbackup failed: {res.stderr[-3000:]}')
        written = 0
        config = TransferConfig(multipart_chunksize=8 * MiB,
                                max_concurrency=8)
        for root, _dirs, files in os.walk(out_dir):
            for name in files:
                path = os.path.join(root, name)
                # its metadata files are rewritten each time: upload them
                if path in before and not name.endswith(('.json', '.xml',
                                                         '.log')):
                    continue
                written += os.path.getsize(path)
                self.s3.upload_file(
                    path, self.bucket,
                    f'{key_prefix}/{os.path.relpath(path, out_dir)}',
                    Config=config)
        return time.monotonic() - start, written

    def start_vm(self):
        self.vm = start_vm(self.work, self.images['qmp'], 'qcow2')

    def run(self, rounds, dirty_mibs):
        self.make_image()
        for tool, domain in self.domains.items():
            define_domain(self.work, domain, self.images[tool])
            virsh('start', domain)
        self.start_vm()
        lv_args = ['--libvirt', self.domains['s3chain'], '--connect', URI,
                   '--disk', 'vda']
        base = f'{self.prefix}/libvirt-backup'
        lv_repo = f's3://{self.bucket}/{base}/libvirt'
        qmp_repo = f's3://{self.bucket}/{base}/qmp'
        vnb_dir = os.path.join(self.work, 'virtnbdbackup')
        self.s3chain(lv_args, lv_repo)
        self.virtnbdbackup('full', vnb_dir, f'{base}/virtnbdbackup')
        self.s3chain(['--vm', 'bench', '--qmp', f'{self.work}/vm.qmp'],
                     qmp_repo)
        print(f'{"dirty":>6} {"round":>5}  {"tool":<26} {"wall s":>7} '
              f'{"uploaded MiB":>12} {"local MiB":>9} {"scratch MiB":>11} '
              f'{"sidecar RSS MiB":>15}')
        ratios = {}
        for mib in dirty_mibs:
            for r in range(rounds):
                seed = self.rnd.randrange(1 << 30)
                # everything off, the same changes made in every image
                for domain in self.domains.values():
                    virsh('destroy', domain)
                self.vm.shutdown()
                for image in self.images.values():
                    dirty_image(image, SIZE, mib * MiB, seed)
                for domain in self.domains.values():
                    virsh('start', domain)
                self.start_vm()
                time.sleep(3)   # the guests boot

                lv_s, lv, lv_rss = self.s3chain(lv_args, lv_repo)
                vnb_s, vnb_local = self.virtnbdbackup(
                    'inc', vnb_dir, f'{base}/virtnbdbackup')
                q_s, q, q_rss = self.s3chain(
                    ['--vm', 'bench', '--qmp', f'{self.work}/vm.qmp'],
                    qmp_repo)
                lv_up = lv['disks'][0]['bytes-stored']
                for tool, secs, up, local, scratch, rss in (
                        ('s3chain --libvirt', lv_s, lv_up,
                         lv.get('scratch-bytes', 0),
                         lv.get('scratch-bytes', 0), lv_rss),
                        ('virtnbdbackup + upload', vnb_s, vnb_local,
                         vnb_local, None, None),
                        ('s3chain over QMP', q_s, q['disks'][0]
                         ['bytes-stored'], 0, 0, q_rss)):
                    print(f'{mib:>6} {r + 1:>5}  {tool:<26} {secs:>7.2f} '
                          f'{up / MiB:>12.1f} {local / MiB:>9.1f} '
                          f'{"n/a" if scratch is None else f"{scratch / MiB:.1f}":>11} '
                          f'{"n/a" if rss is None else f"{rss / MiB:.0f}":>15}',
                          flush=True)
                # as docs/benchmarks.rst has them: baseline / s3chain
                ratios.setdefault(mib, []).append((vnb_s / lv_s, q_s / lv_s))
        print()
        for mib, pairs in ratios.items():
            vnb = [p[0] for p in pairs]
            qmp = [p[1] for p in pairs]
            print(f'{mib} MiB dirty: (virtnbdbackup + upload) / s3chain '
                  f'--libvirt = {min(vnb):.2f}..{max(vnb):.2f}; s3chain over '
                  f'QMP / s3chain --libvirt = {min(qmp):.2f}..{max(qmp):.2f}')

    def close(self):
        if self.vm:
            self.vm.shutdown()
        for domain in self.domains.values():
            subprocess.run(['virsh', '-q', '-c', URI, 'destroy', domain],
                           check=False, capture_output=True)
            subprocess.run(['virsh', '-q', '-c', URI, 'undefine', domain,
                            '--checkpoints-metadata'], check=False,
                           capture_output=True)


def main():
    env_file, work, prefix, rounds = sys.argv[1:5]
    bench = Bench(env_file, work, prefix)
    try:
        bench.run(int(rounds), [int(m) for m in sys.argv[5:]])
    finally:
        bench.close()


if __name__ == '__main__':
    main()
