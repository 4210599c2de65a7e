#!/usr/bin/env python3
"""Full backups of a running VM and restores of them, plain, compressed,
encrypted, and both, against each other and against restic (Debian's,
which encrypts and compresses) on the same disk: wall time, throughput,
bytes stored, and the ratio of each to plain.

The VM: Debian's qemu-system (TCG) with a 4 GiB raw disk, half random
data, a quarter text (log lines), a quarter zeroes written out (allocated
in the file, so the backup reads them).  Each round, in an order that
rotates, each variant backs the VM up in full into a repository of its
own, then `s3chain restore` writes the point to a local raw file, which
is checked against the disk; restic backs the same disk file up into a
repository of its own in the same bucket (`restic backup`, compression
auto, a fresh cache) and restores it (`restic restore`).

Usage: encryption.py ENV_FILE WORKDIR PREFIX ROUNDS
"""

# SPDX-License-Identifier: GPL-2.0-or-later
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import time

from vmbench import GiB, MiB, S3CHAIN, BucketBench, s3obj, start_vm

DISK = 4 * GiB
VARIANTS = {
    'plain': [],
    'compressed': ['--compress', 'zstd'],
    'encrypted': ['--encrypt'],
    'encrypted + compressed': ['--encrypt', '--compress', 'zstd'],
}


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        while True:
            block = f.read(8 * MiB)
            if not block:
                return h.hexdigest()
            h.update(block)


class Bench(BucketBench):
    def __init__(self, env_file, work, prefix):
        super().__init__(env_file, work, prefix)
        self.disk = os.path.join(work, 'disk.raw')
        self.key_file = os.path.join(work, 'key')
        self.password_file = os.path.join(work, 'restic-password')
        for path, data in ((self.key_file, os.urandom(32)),
                           (self.password_file, os.urandom(24).hex())):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            with os.fdopen(fd, 'wb' if isinstance(data, bytes) else 'w') as f:
                f.write(data)
        self.vm = None

    def make_disk(self):
        line = 0
        with open(self.disk, 'wb') as disk:
            for _ in range(DISK // 2 // MiB):
                disk.write(os.urandom(MiB))
            text = bytearray()
            while len(text) < DISK // 4:
                text += (f'{line:09d} 2026-12-02T01:{line % 60:02d}:00Z '
                         f'kernel: eth0: link up, 1000 Mbps, full duplex, '
                         f'flow control rx/tx ({line % 977})\n').encode()
                line += 1
            disk.write(text[:DISK // 4])
            zeroes = bytes(MiB)
            for _ in range(DISK // 4 // MiB):
                disk.write(zeroes)
            disk.flush()
            os.fsync(disk.fileno())
        self.disk_sha = sha256_of(self.disk)

    def s3chain_round(self, runtime, qmp, name, args, n):
        prefix = f'{self.prefix}/{name.replace(" + ", "-")}-{n}'
        repo = f's3://{self.bucket}/{prefix}'
        key_args = ['--key-file', self.key_file] if '--encrypt' in args \
            else []
        took, _, result = self.s3chain_backup(runtime, qmp, repo, '--full',
                                              *key_args, *args)
        stored = self.stored_bytes(prefix + '/')
        target = os.path.join(self.work, 'restored.raw')
        start = time.monotonic()
        subprocess.run([S3CHAIN, 'restore', '--vm', 'bench', '--repo', repo,
                        '--backup', result['backup'], '--target',
                        f'vd0={target}', '--json', '--progress', 'none',
                        *key_args], env=self.proc_env, check=True,
                       stdout=subprocess.DEVNULL)
        restored = time.monotonic() - start
        assert sha256_of(target) == self.disk_sha, f'{name}: restore differs'
        os.remove(target)
        s3obj.delete_prefix(self.s3, self.bucket, prefix + '/')
        return took, restored, stored

    def restic(self, *args, cache):
        env = dict(self.proc_env, RESTIC_PASSWORD_FILE=self.password_file,
                   RESTIC_CACHE_DIR=cache)
        subprocess.run(['restic', '--quiet', *args], env=env, check=True,
                       stdout=subprocess.DEVNULL)

    def restic_round(self, n):
        prefix = f'{self.prefix}/restic-{n}'
        repo = (f's3:{self.env["S3CHAIN_ENDPOINT"]}/{self.bucket}/'
                f'{prefix}')
        cache = os.path.join(self.work, 'restic-cache')
        shutil.rmtree(cache, ignore_errors=True)
        self.restic('-r', repo, 'init', '--repository-version', '2',
                    cache=cache)
        start = time.monotonic()
        self.restic('-r', repo, 'backup', '--compression', 'auto',
                    self.disk, cache=cache)
        took = time.monotonic() - start
        stored = self.stored_bytes(prefix + '/')
        shutil.rmtree(cache, ignore_errors=True)
        out = os.path.join(self.work, 'restic-out')
        start = time.monotonic()
        self.restic('-r', repo, 'restore', 'latest', '--target', out,
                    cache=cache)
        restored = time.monotonic() - start
        got = os.path.join(out, self.disk.lstrip('/'))
        assert sha256_of(got) == self.disk_sha, 'restic: restore differs'
        shutil.rmtree(out)
        shutil.rmtree(cache, ignore_errors=True)
        s3obj.delete_prefix(self.s3, self.bucket, prefix + '/')
        return took, restored, stored


def main():
    env_file, work, prefix, rounds = sys.argv[1:5]
    rounds = int(rounds)
    b = Bench(env_file, work, prefix)
    b.make_disk()
    b.vm = start_vm(work, b.disk, 'raw')
    runtime, qmp = b.start_sidecar()
    names = list(VARIANTS) + ['restic']
    results = {name: [] for name in names}
    try:
        for n in range(rounds):
            order = names[n % len(names):] + names[:n % len(names)]
            for name in order:
                subprocess.run(['sync'], check=True)
                if name == 'restic':
                    results[name].append(b.restic_round(n))
                else:
                    results[name].append(b.s3chain_round(
                        runtime, qmp, name, VARIANTS[name], n))
    finally:
        b.stop_sidecar()
        b.vm.shutdown()

    print(f'disk: {DISK // GiB} GiB raw: half random, a quarter text, a '
          f'quarter zeroes written out; {rounds} rounds, medians (min-max)')
    plain = [statistics.median(r[i] for r in results['plain'])
             for i in range(3)]
    print(f'{"what":<24}{"backup s":>22}{"MB/s":>6}{"ratio":>7}'
          f'{"restore s":>22}{"MB/s":>6}{"ratio":>7}{"stored MiB":>12}'
          f'{"of plain":>9}')
    for name in names:
        rows = results[name]
        cells = ''
        for i in (0, 1):
            values = [r[i] for r in rows]
            med = statistics.median(values)
            spread = f'{med:.2f} ({min(values):.2f}-{max(values):.2f})'
            cells += (f'{spread:>22}{DISK / med / 1e6:>6.0f}'
                      f'{plain[i] / med:>7.2f}')
        stored = statistics.median(r[2] for r in rows)
        print(f'{name:<24}{cells}{stored / MiB:>12.0f}'
              f'{stored / plain[2]:>9.2f}')
    print('ratio: plain s3chain\'s seconds / these (above 1: faster); '
          'stored: bytes in the bucket after the full backup')


if __name__ == '__main__':
    main()
