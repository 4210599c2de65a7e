#!/usr/bin/env python3
"""Restore benchmarks of `s3chain restore` and `s3chain serve`, in one run
against the local radosgw:

- throughput: a 4 GiB disk of incompressible data, backed up full by
  `s3chain backup`, restored to a raw file by `s3chain restore`, against
  a plain download of the same bytes (the raw disk as one object) with 4
  and with 8 parallel ranged GETs (curl on a presigned URL);
- chain-length cost: the restore of a chain of a full and 10 incremental
  backups (64 MiB changed before each), against the restore of a single
  full backup of the same final content;
- time to first read of a served backup: from starting `s3chain serve`
  to its ready line, and to the first 4 KiB read over NBD, for the
  11-image chain and the single full.
- the requests of one restore of each, the chain and the single full,
  from the driver's trace (s3chain_request): GETs and bytes asked for,
  of the chain's map and of the copy; stable where times are noisy.

Runs of the variants being compared are interleaved; medians reported.
With S3CHAIN_BENCH_BEFORE, the qemu-img of another build (the commit
before a change), the restores also run with it, labelled "(before)".
Usage: restore.py ENV_FILE WORKDIR PREFIX RUNS
"""

# SPDX-License-Identifier: GPL-2.0-or-later
import json
import os
import random
import subprocess
import sys
import time

from vmbench import (GiB, MiB, QEMU_BUILD, QEMU_IMG, QSD, REPO, S3CHAIN,
                     dirty, start_vm)

# pylint: disable=wrong-import-position
from boto3.s3.transfer import TransferConfig  # noqa: E402
import s3obj  # noqa: E402
from request_trace import gets, traced_qemu_img  # noqa: E402

BEFORE = os.environ.get('S3CHAIN_BENCH_BEFORE')
SIZE = 4 * GiB
DIRTY = 64 * MiB
INCREMENTALS = 10


def median(values):
    values = sorted(values)
    return values[(len(values) - 1) // 2]


class Bench:
    def __init__(self, env_file, work, prefix):
        self.env = s3obj.load_env(env_file)
        self.work = work
        self.s3 = s3obj.client(self.env)
        self.bucket = self.env['S3CHAIN_BUCKET']
        self.prefix = prefix
        self.repo = f's3://{self.bucket}/{prefix}/s3chain'
        self.runtime = os.path.join(work, 'run')
        self.proc_env = dict(
            os.environ, AWS_ACCESS_KEY_ID=self.env['AWS_ACCESS_KEY_ID'],
            AWS_SECRET_ACCESS_KEY=self.env['AWS_SECRET_ACCESS_KEY'],
            AWS_ENDPOINT_URL=self.env['S3CHAIN_ENDPOINT'],
            S3CHAIN_QSD=QSD,
            S3CHAIN_SIDECAR=os.path.join(REPO, 'qsd-config',
                                         's3chain-sidecar'),
            S3CHAIN_QEMU_IMG=QEMU_IMG)

    def s3chain(self, *args, env=None):
        return subprocess.run([S3CHAIN, *args, '--repo', self.repo,
                               '--json', '--progress', 'none'],
                              env=env or self.proc_env, check=True,
                              capture_output=True, text=True)

    def backup(self, *args):
        out = self.s3chain('backup', '--vm', 'bench', '--qmp',
                           f'{self.work}/vm.qmp', '--runtime-dir',
                           self.runtime, *args)
        return json.loads(out.stdout.splitlines()[-1])['backup']

    def setup(self):
        disk = os.path.join(self.work, 'disk.qcow2')
        self.disk = disk
        raw = os.path.join(self.work, 'disk.raw')
        with open(raw, 'wb') as f:
            for _ in range(SIZE // (64 * MiB)):
                f.write(os.urandom(64 * MiB))
        self.s3.upload_file(raw, self.bucket, f'{self.prefix}/disk.raw',
                            Config=TransferConfig(
                                multipart_chunksize=16 * MiB,
                                max_concurrency=8))
        subprocess.run([QEMU_IMG, 'convert', '-f', 'raw', '-O', 'qcow2',
                        raw, disk], check=True)
        os.remove(raw)
        self.vm = start_vm(self.work, disk, 'qcow2')
        self.first = self.backup()

    def make_chain(self):
        """10 incrementals on the first full, then a full of the same"""
        rnd = random.Random(4)
        for _ in range(INCREMENTALS):
            dirty(self.vm, SIZE, DIRTY, rnd)
            self.chain_top = self.backup()
        self.single_full = self.backup('--full')
        self.vm.shutdown()
        os.remove(self.disk)

    def restore(self, point, out_dir, before=False):
        """Seconds of a restore of @point, with the other build's
        qemu-img if @before"""
        target = os.path.join(out_dir, 'restored.raw')
        env = dict(self.proc_env, S3CHAIN_QEMU_IMG=BEFORE) if before else None
        subprocess.run(['sync'], check=True)
        start = time.monotonic()
        self.s3chain('restore', '--vm', 'bench', '--backup', point,
                     '--target', f'vd0={target}', env=env)
        took = time.monotonic() - start
        os.remove(target)
        return took

    def requests(self, point):
        """GETs and bytes asked for by each qemu-img run of a restore of
        @point (map, convert), from the driver's trace"""
        wrapper, traces = traced_qemu_img(QEMU_IMG, self.work)
        target = os.path.join(self.work, 'restored.raw')
        self.s3chain('restore', '--vm', 'bench', '--backup', point,
                     '--target', f'vd0={target}',
                     env=dict(self.proc_env, S3CHAIN_QEMU_IMG=wrapper))
        os.remove(target)
        counts = {}
        for name in os.listdir(traces):
            requests = gets(os.path.join(traces, name))
            counts[name.split('.')[0]] = (len(requests),
                                          sum(n for _, _, n in requests))
            os.remove(os.path.join(traces, name))
        os.rmdir(traces)
        os.remove(wrapper)
        return counts

    def parallel_get(self, parts, out_dir):
        url = subprocess.run(
            ['python3', os.path.join(REPO, 'scripts', 's3obj.py'),
             os.environ['S3CHAIN_BENCH_ENV'], 'presign',
             f'{self.prefix}/disk.raw'], check=True, capture_output=True,
            text=True).stdout.strip()
        part = (SIZE + parts - 1) // parts
        subprocess.run(['sync'], check=True)
        start = time.monotonic()
        procs = [subprocess.Popen(
            ['curl', '-sf', '-r', f'{i * part}-{min(SIZE, (i + 1) * part) - 1}',
             '-o', os.path.join(out_dir, f'part.{i}'), url])
            for i in range(parts)]
        for p in procs:
            assert p.wait() == 0
        took = time.monotonic() - start
        for i in range(parts):
            os.remove(os.path.join(out_dir, f'part.{i}'))
        return took

    def first_read(self, point):
        sock = os.path.join(self.work, 'serve.sock')
        start = time.monotonic()
        serve = subprocess.Popen(
            [S3CHAIN, 'serve', '--vm', 'bench', '--backup', point,
             '--listen', f'unix:{sock}', '--runtime-dir', self.runtime,
             '--repo', self.repo, '--json'], env=self.proc_env,
            stdout=subprocess.PIPE, text=True)
        for line in serve.stdout:
            if json.loads(line).get('event') == 'ready':
                break
        ready = time.monotonic() - start
        subprocess.run([os.path.join(QEMU_BUILD, 'qemu-io'), '-r', '-f',
                        'raw', '-c', 'read 0 4k',
                        f'nbd+unix:///vd0?socket={sock}'], check=True,
                       capture_output=True)
        first = time.monotonic() - start
        serve.terminate()
        serve.communicate()
        return ready, first

    def run(self, runs):
        self.setup()
        fstype = subprocess.run(['df', '--output=fstype', self.work],
                                capture_output=True,
                                text=True).stdout.split()[-1]
        # radosgw keeps objects in RAM (memstore): the raw object goes
        # before the chain comes, and the output is on disk only
        order = ['restore', 'get4', 'get8'] + (['before'] if BEFORE else [])
        times = {what: [] for what in order}
        for r in range(runs):
            for what in order[r % len(order):] + order[:r % len(order)]:
                if what in ('restore', 'before'):
                    times[what].append(self.restore(self.first, self.work,
                                                    what == 'before'))
                else:
                    times[what].append(self.parallel_get(int(what[3:]),
                                                         self.work))
        results = {fstype: {k: median(v) for k, v in times.items()}}
        self.s3.delete_object(Bucket=self.bucket, Key=f'{self.prefix}/disk.raw')
        self.make_chain()
        kinds = ['full', 'chain'] + (['full before', 'chain before']
                                     if BEFORE else [])
        chain = {what: [] for what in kinds}
        for r in range(runs):
            for what in kinds[r % len(kinds):] + kinds[:r % len(kinds)]:
                point = (self.chain_top if what.startswith('chain')
                         else self.single_full)
                chain[what].append(self.restore(point, self.work,
                                                what.endswith('before')))
        first = {'chain': [], 'full': []}
        for r in range(runs):
            for what in ('chain', 'full'):
                point = self.chain_top if what == 'chain' else self.single_full
                first[what].append(self.first_read(point))
        requests = {'chain': self.requests(self.chain_top),
                    'full': self.requests(self.single_full)}
        return results, {k: median(v) for k, v in chain.items()}, {
            k: (median([a for a, _ in v]), median([b for _, b in v]))
            for k, v in first.items()}, requests


def main():
    env_file, work, prefix, runs = sys.argv[1:5]
    os.environ['S3CHAIN_BENCH_ENV'] = env_file
    runs = int(runs)
    bench = Bench(env_file, work, prefix)
    throughput, chain, first, requests = bench.run(runs)
    gb = SIZE / 1e6
    print(f'# restore: a 4 GiB disk of random data; {runs} interleaved runs,'
          ' medians')
    if BEFORE:
        print(f'# "(before)": restored with {BEFORE}')
    for label, t in throughput.items():
        print(f'\noutput on {label}')
        print(f'{"what":<46} {"seconds":>8} {"MB/s":>8} {"ratio":>8}')
        for key, name in (('get4', 'baseline: 4 parallel ranged GETs'),
                          ('get8', 'baseline: 8 parallel ranged GETs'),
                          ('restore', 's3chain restore (full backup)'),
                          ('before', 's3chain restore (full backup) (before)')):
            if key not in t:
                continue
            print(f'{name:<46} {t[key]:8.2f} {gb / t[key]:8.0f} '
                  f'{min(t["get4"], t["get8"]) / t[key]:8.2f}')
    print(f'\nchain-length cost (output on the work directory\'s disk)')
    print(f'{"what":<46} {"seconds":>8} {"ratio":>8}')
    print(f'{"single full backup of the final content":<46} '
          f'{chain["full"]:8.2f} {1:8.2f}')
    print(f'{"full + 10 incrementals":<46} {chain["chain"]:8.2f} '
          f'{chain["chain"] / chain["full"]:8.2f}')
    if BEFORE:
        print(f'{"single full (before)":<46} {chain["full before"]:8.2f} '
              f'{chain["full before"] / chain["full"]:8.2f}')
        print(f'{"full + 10 incrementals (before)":<46} '
              f'{chain["chain before"]:8.2f} '
              f'{chain["chain before"] / chain["full"]:8.2f}')
    print('\ntime to first read of a served backup (s3chain serve)')
    print(f'{"what":<46} {"ready s":>8} {"1st 4K s":>8}')
    for key, name in (('full', 'single full backup'),
                      ('chain', 'full + 10 incrementals')):
        print(f'{name:<46} {first[key][0]:8.2f} {first[key][1]:8.2f}')
    print('\nrequests of one restore, traced (bytes: the ranges asked for)')
    print(f'{"what":<46} {"GETs":>8} {"MB":>8}')
    for key, name in (('full', 'single full backup'),
                      ('chain', 'full + 10 incrementals')):
        for step in ('map', 'convert'):
            gets, sizes = requests[key][step]
            print(f'{name + ": " + step:<46} {gets:8d} {sizes / 1e6:8.1f}')
    print('\nratio = the better baseline\'s seconds / these seconds '
          '(above 1: faster than the baseline)')


if __name__ == '__main__':
    main()
