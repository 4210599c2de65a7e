#!/usr/bin/env python3
"""What deleting and merging backups cost, and gc on many objects.

1. Deleting the oldest point: a VM with a 16 GiB raw disk holding 4 GiB
   of random data, a full backup, then 10 incrementals of 64 MiB each;
   `s3chain delete` of the full merges the first incremental into it.
   Two kinds of guest writes, one chain each: 64 MiB in one run of 1 MiB
   writes (a file rewritten), and 1024 writes of 64 KiB scattered over
   the data (a database's pages).  Bytes moved are the bytes of the
   objects the delete uploaded (listing before and after), against the
   merged incremental's stored bytes.
2. Incremental forever against a new full every 10: 30 backups of the
   same VM each way, 64 MiB dirtied in 1 MiB pieces at random places
   between backups; bytes read from the VM (the backups' bytes-copied)
   and bytes uploaded (every object that appeared, merges included),
   and the superseded chunks that gc then finds.
3. gc of 10,000 objects (100 images of failed backups, 100 objects
   each, 4 KiB): its wall time, and its requests, counted by a proxy
   in a second run on the same set.

Usage: lifecycle.py ENV_FILE WORKDIR PREFIX [merge] [forever] [gc]
(the parts to run, 1 to 3; all by default)
"""

# SPDX-License-Identifier: GPL-2.0-or-later
import concurrent.futures
import json
import os
import random
import subprocess
import sys
import time

from vmbench import REPO, GiB, MiB, S3CHAIN, BucketBench, hmp, start_vm

sys.path.insert(0, os.path.join(REPO, 'tests', 'orchestrator'))
# pylint: disable=wrong-import-position
from harness import FaultProxy  # noqa: E402

DISK = 16 * GiB
DATA = 4 * GiB
INCREMENT = 64 * MiB


class Bench(BucketBench):
    def __init__(self, env_file, work, prefix):
        super().__init__(env_file, work, prefix)
        self.disk = os.path.join(work, 'vd0.raw')
        self.runtime, self.qmp = self.start_sidecar()
        rnd = random.Random(1)
        self.pieces = sorted(rnd.sample(range(DISK // MiB), DATA // MiB))
        with open(self.disk, 'wb') as disk:
            disk.truncate(DISK)
            for piece in self.pieces:
                disk.seek(piece * MiB)
                disk.write(os.urandom(MiB))
        self.vm = start_vm(work, self.disk, 'raw')

    def repo(self, name):
        return f's3://{self.bucket}/{self.prefix}/{name}'

    def objects(self, name):
        """Every object of repository @name, with its size"""
        out = {}
        pages = self.s3.get_paginator('list_objects_v2').paginate(
            Bucket=self.bucket, Prefix=f'{self.prefix}/{name}/')
        for page in pages:
            for obj in page.get('Contents', []):
                out[obj['Key']] = obj['Size']
        return out

    def drop(self, name):
        """Deletes repository @name, so that the next one has the room"""
        keys = list(self.objects(name))
        for i in range(0, len(keys), 1000):
            self.s3.delete_objects(Bucket=self.bucket, Delete={
                'Objects': [{'Key': k} for k in keys[i:i + 1000]]})

    def command(self, *args):
        """Runs `s3chain` with @args; returns its seconds and result"""
        start = time.monotonic()
        out = subprocess.run([S3CHAIN, *args, '--progress', 'none',
                              '--json'], env=self.proc_env, check=True,
                             stdout=subprocess.PIPE, text=True).stdout
        return time.monotonic() - start, json.loads(out.splitlines()[-1])

    def backup(self, name, *args):
        return self.s3chain_backup(self.runtime, self.qmp, self.repo(name),
                                   *args)[2]

    def write_run(self, rnd):
        """64 MiB rewritten as one run of 1 MiB writes in the data"""
        first = rnd.randrange(0, len(self.pieces) - INCREMENT // MiB)
        for piece in self.pieces[first:first + INCREMENT // MiB]:
            hmp(self.vm, f'qemu-io -d vd0 "write -P {rnd.randrange(1, 255)} '
                         f'{piece * MiB} 1M"')

    def write_scattered(self, rnd):
        """64 MiB rewritten as 64 KiB writes all over the data"""
        for _ in range(INCREMENT // (64 * 1024)):
            off = rnd.choice(self.pieces) * MiB + rnd.randrange(16) * 65536
            hmp(self.vm, f'qemu-io -d vd0 "write -P {rnd.randrange(1, 255)} '
                         f'{off} 64k"')

    def write_random(self, rnd):
        """64 MiB in 1 MiB pieces anywhere on the disk"""
        for _ in range(INCREMENT // MiB):
            off = rnd.randrange(0, DISK // MiB) * MiB
            hmp(self.vm, f'qemu-io -d vd0 "write -P {rnd.randrange(1, 255)} '
                         f'{off} 1M"')

    def delete_oldest(self, name, write):
        rnd = random.Random(name)
        ids = [self.backup(name)['backup']]
        stored = []
        for _ in range(10):
            write(rnd)
            result = self.backup(name)
            ids.append(result['backup'])
            stored.append(result['disks'][0]['bytes-stored'])
        before = self.objects(name)
        took, _ = self.command('delete', '--repo', self.repo(name), '--vm',
                               'bench', '--backup', ids[0])
        after = self.objects(name)
        uploaded = sum(size for key, size in after.items()
                       if key not in before)
        new = sum(1 for key in after if key not in before)
        self.drop(name)
        return {'seconds': took, 'uploaded': uploaded, 'objects': new,
                'merged-stored': stored[0]}

    def forever(self, name, *args):
        rnd = random.Random(7)
        seen, read, uploaded, fulls = {}, 0, 0, 0
        for _ in range(30):
            result = self.backup(name, *args)
            read += result['disks'][0]['bytes-copied']
            fulls += result['disks'][0]['type'] == 'full'
            now = self.objects(name)
            uploaded += sum(size for key, size in now.items()
                            if seen.get(key) != size)
            seen = now
            self.write_random(rnd)
        # what normal backups (and merges) leave for gc
        _, gc = self.command('gc', '--repo', self.repo(name), '--vm',
                             'bench', '--grace', '0', '--dry-run')
        self.drop(name)
        return {'read': read, 'uploaded': uploaded, 'fulls': fulls,
                'stored': sum(seen.values()),
                'superseded': gc['superseded-chunks']['objects']}


def plant(bench, name):
    """10,000 objects of 100 images no catalog names, beside a backup"""
    base = f'{bench.prefix}/{name}/s3chain/vms/bench/disks/vd0'
    keys = [f'{base}/20200101T0000{i:02d}Z-dead.qcow2' for i in range(100)]
    keys = [k + suffix for k in keys for suffix in
            [''] + [f'.d/{c:016x}.1.1' for c in range(99)]]
    body = os.urandom(4096)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: bench.s3.put_object(
            Bucket=bench.bucket, Key=k, Body=body), keys))
    return len(keys)


def main():
    env_file, work, prefix = sys.argv[1:4]
    parts = sys.argv[4:] or ['merge', 'forever', 'gc']
    bench = Bench(env_file, work, prefix)
    if 'merge' in parts:
        delete_oldest(bench)
    if 'forever' in parts:
        merge_after(bench)
    if 'gc' in parts:
        gc_many(bench)
    bench.vm.shutdown()
    bench.stop_sidecar()


def delete_oldest(bench):
    print('1. deleting the oldest point (the full, 4 GiB on a 16 GiB disk) '
          'under 10 incrementals of 64 MiB')
    print(f'{"guest writes":<28} {"seconds":>8} {"uploaded":>10} '
          f'{"objects":>8} {"merged inc":>10} {"ratio":>6}')
    for label, write in (('one run of 1 MiB writes', bench.write_run),
                         ('scattered 64 KiB writes', bench.write_scattered)):
        r = bench.delete_oldest(label.split()[0], write)
        print(f'{label:<28} {r["seconds"]:8.1f} '
              f'{r["uploaded"] / MiB:9.0f}M {r["objects"]:8d} '
              f'{r["merged-stored"] / MiB:9.0f}M '
              f'{r["uploaded"] / r["merged-stored"]:6.2f}')
    print()


def merge_after(bench):
    print('2. 30 backups, 64 MiB dirtied in 1 MiB pieces between them')
    print(f'{"":<28} {"read GiB":>9} {"upl. GiB":>9} {"fulls":>6} '
          f'{"kept GiB":>9} {"superseded":>10}')
    rows = {}
    for label, args in (('--merge-after 10', ('--merge-after', '10')),
                        ('--chain-limit 10', ('--chain-limit', '10'))):
        rows[label] = r = bench.forever(label.split()[0][2:], *args)
        print(f'{label:<28} {r["read"] / GiB:9.2f} {r["uploaded"] / GiB:9.2f}'
              f' {r["fulls"]:6d} {r["stored"] / GiB:9.2f} '
              f'{r["superseded"]:10d}')
    a, b = rows['--merge-after 10'], rows['--chain-limit 10']
    print(f'{"ratio (merge / full)":<28} {a["read"] / b["read"]:9.2f} '
          f'{a["uploaded"] / b["uploaded"]:9.2f}')
    print()


def gc_many(bench):
    bench.backup('gc')
    n = plant(bench, 'gc')
    took, _ = bench.command('gc', '--repo', bench.repo('gc'), '--vm',
                            'bench', '--grace', '0')
    plant(bench, 'gc')
    proxy = FaultProxy(bench.env['S3CHAIN_ENDPOINT'])
    bench.proc_env['AWS_ENDPOINT_URL'] = proxy.endpoint
    bench.command('gc', '--repo', bench.repo('gc'), '--vm', 'bench',
                  '--grace', '0')
    counts = ', '.join(f'{k} {v}' for k, v in sorted(proxy.methods.items()))
    print(f'3. gc of {n} objects: {took:.1f} s; requests: {counts}')


if __name__ == '__main__':
    main()
