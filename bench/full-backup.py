#!/usr/bin/env python3
"""Full backups of a running VM against a plain upload of the same data,
the guest's write latency during them, the CPU each process spends, and
an incremental with 1 GiB dirty against the OADP pipeline.

The VM: Debian's qemu-system (TCG) with an 8 GiB raw disk that holds
2 GiB of random data in 1 MiB pieces.  Each round, interleaved:

- boto3: a multipart upload (8 MiB parts, 8 threads) of the same 2 GiB,
  with the probe below writing meanwhile, with no backup running: the
  latency that the machine's load alone costs;
- s3chain: `s3chain backup --full` through the sidecar, while a probe
  writes 64 KiB through the VM's monitor to clusters the backup has not
  copied yet (data in the top quarter of the disk, highest first);
- idle: the same probe with no backup running.

Then once: 1 GiB dirtied in 1 MiB pieces, and an incremental by s3chain
against the OADP temp-volume pipeline (blockdev-backup into a local
qcow2, then the boto3 upload of it), from the same bitmap, once the
host's page cache holds none of it dirty; and a restore
of that point (the full and the incremental) into a raw file, checked
against the disk.

CPU seconds come from /proc/PID/stat (VM, sidecar, radosgw and ceph-osd)
and wait4 (the command, the boto3 client).  PUTs and GETs are counted in
the sidecar's trace of s3chain_request.

Usage: full-backup.py ENV_FILE WORKDIR PREFIX ROUNDS
"""

# SPDX-License-Identifier: GPL-2.0-or-later
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time

from vmbench import (GiB, MiB, REPO, S3CHAIN, BucketBench, cpu_seconds,
                     hmp, oadp_bitmap, read_bytes, start_vm)

DISK = 8 * GiB
DATA = 2 * GiB
DIRTY = 1 * GiB
PROBE = 64 * 1024
PROBE_EVERY = 0.05      # seconds between probe writes
TRACED = ('s3chain_request', 's3chain_buffer_full', 's3chain_upload_chunk')


def pids_of(name):
    out = subprocess.run(['pgrep', '-x', name], capture_output=True,
                         text=True, check=False).stdout
    return [int(p) for p in out.split()]


def quantile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class Probe(threading.Thread):
    """64 KiB guest writes through the monitor, one every PROBE_EVERY
    seconds, to the clusters @clusters gives, until stopped; the
    latency of each is kept"""

    def __init__(self, vm, clusters):
        super().__init__(daemon=True)
        self.vm = vm
        self.clusters = clusters
        self.latencies = []
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.is_set():
            offset = next(self.clusters)
            start = time.monotonic()
            hmp(self.vm, f'qemu-io -d vd0 "write -P 0x5a {offset} 64k"')
            self.latencies.append(time.monotonic() - start)
            self.stopping.wait(PROBE_EVERY)

    def stop(self):
        self.stopping.set()
        self.join()
        return self.latencies


class Bench(BucketBench):
    def __init__(self, env_file, work, prefix):
        super().__init__(env_file, work, prefix)
        self.env_file = env_file
        self.disk = os.path.join(work, 'disk.raw')
        self.data = os.path.join(work, 'data.bin')
        self.pieces = []
        self.vm = None
        self.others = {}

    def make_disk(self):
        """DATA of random bytes in 1 MiB pieces at random places of the
        disk, and the same bytes in one file for the plain upload"""
        rnd = random.Random(1)
        self.pieces = sorted(rnd.sample(range(DISK // MiB), DATA // MiB))
        with open(self.disk, 'wb') as disk, open(self.data, 'wb') as data:
            disk.truncate(DISK)
            for piece in self.pieces:
                chunk = os.urandom(MiB)
                disk.seek(piece * MiB)
                disk.write(chunk)
                data.write(chunk)
            # written back now, not by the flush of the VM's pause
            disk.flush()
            os.fsync(disk.fileno())

    def clusters(self, top_first):
        """Each 64 KiB cluster of the data in the disk's top quarter once,
        highest first, or the rest, lowest first"""
        quarter = self.pieces[len(self.pieces) * 3 // 4:]
        pieces = reversed(quarter) if top_first else \
            self.pieces[:len(self.pieces) * 3 // 4]
        for piece in pieces:
            for i in reversed(range(MiB // PROBE)) if top_first else \
                    range(MiB // PROBE):
                yield piece * MiB + i * PROBE

    def cpu(self):
        """CPU seconds so far of the VM, the sidecar and the server"""
        return {
            'vm': cpu_seconds(self.vm.get_pid()),
            'sidecar': cpu_seconds(self.sidecar.pid),
            'server': sum(cpu_seconds(p) for p in self.others['server']),
        }

    def requests(self):
        """PUTs, GETs and waits for buffer room the sidecar traced"""
        counts = {'PUT': 0, 'GET': 0, 'room-waits': 0, 'uploads': 0}
        with open(self.sidecar_trace, encoding='utf-8',
                  errors='replace') as f:
            for line in f:
                if 's3chain_request ' in line:
                    words = line.split()
                    for method in ('PUT', 'GET'):
                        if method in words:
                            counts[method] += 1
                elif 's3chain_buffer_full' in line:
                    counts['room-waits'] += 1
                elif 's3chain_upload_chunk' in line:
                    counts['uploads'] += 1
        return counts

    def chunks_stored(self, prefix):
        total = 0
        pages = self.s3.get_paginator('list_objects_v2').paginate(
            Bucket=self.bucket, Prefix=prefix)
        for page in pages:
            total += sum(1 for o in page.get('Contents', [])
                         if '.d/' in o['Key'])
        return total

    def measured(self, what, *args):
        """Runs @what(*args), returning its result with the wall time and
        the CPU time each process spent meanwhile"""
        before, reqs = self.cpu(), self.requests()
        vm_read = read_bytes(self.vm.get_pid())
        start = time.monotonic()
        result = what(*args)
        took = time.monotonic() - start
        after, reqs_after = self.cpu(), self.requests()
        cpu = {k: round(after[k] - before[k], 2) for k in after}
        reqs = {k: reqs_after[k] - reqs[k] for k in reqs}
        reqs['vm-read'] = read_bytes(self.vm.get_pid()) - vm_read
        return took, cpu, reqs, result

    def boto3_upload(self, key):
        """The upload in a process of its own, for its CPU time, with the
        probe running"""
        probe = Probe(self.vm, self.idle_clusters)
        probe.start()
        proc = subprocess.Popen(
            [sys.executable, '-c',
             'import sys, vmbench; b = vmbench.BucketBench(*sys.argv[1:4]); '
             'b.upload(sys.argv[4], sys.argv[5])',
             self.env_file, self.work, self.prefix, self.data, key],
            cwd=os.path.dirname(os.path.abspath(__file__)))
        _, status, usage = os.wait4(proc.pid, 0)
        latencies = probe.stop()
        assert os.waitstatus_to_exitcode(status) == 0
        return usage.ru_utime + usage.ru_stime, latencies

    def idle_probe(self, seconds):
        probe = Probe(self.vm, self.idle_clusters)
        probe.start()
        time.sleep(seconds)
        return probe.stop()

    def full_backup(self, runtime, qmp, repo):
        probe = Probe(self.vm, self.clusters(True))
        probe.start()
        try:
            took, cpu, result = self.s3chain_backup(runtime, qmp, repo,
                                                    '--full')
        finally:
            latencies = probe.stop()
        assert result['disks'][0]['type'] == 'full', result
        return took, cpu, latencies

    def rm(self, prefix):
        subprocess.run([sys.executable, os.path.join(REPO, 'scripts',
                                                      's3obj.py'),
                        self.env_file, 'rm-prefix', prefix], check=True)

    def run(self, rounds):
        self.make_disk()
        self.vm = start_vm(self.work, self.disk, 'raw')
        self.others['server'] = pids_of('radosgw') + pids_of('ceph-osd')
        runtime, qmp = self.start_sidecar(TRACED)
        self.idle_clusters = self.clusters(False)
        rows = []
        try:
            for r in range(rounds):
                base = f'{self.prefix}/round{r}'
                took, cpu, _, (client, latencies) = self.measured(
                    self.boto3_upload, f'{base}/boto3.bin')
                cpu['client'] = round(client, 2)
                rows.append({'what': 'boto3', 'seconds': round(took, 2),
                             'cpu': cpu, 'latency': latencies})
                self.rm(f'{base}/')

                repo = f's3://{self.bucket}/{base}/s3chain'
                took, cpu, reqs, (_, client, latencies) = self.measured(
                    self.full_backup, runtime, qmp, repo)
                cpu['client'] = round(client, 2)
                rows.append({'what': 's3chain full', 'seconds': round(took, 2),
                             'cpu': cpu, 'requests': reqs,
                             'chunks': self.chunks_stored(f'{base}/'),
                             'latency': latencies})
                idle = self.idle_probe(5)
                rows.append({'what': 'idle', 'latency': idle})
                if r < rounds - 1:
                    self.rm(f'{base}/')
            rows.append(self.incremental(runtime, qmp, repo, base))
            rows.append(self.restore(repo))
        finally:
            self.stop_sidecar()
            self.vm.shutdown()
        return rows

    def incremental(self, runtime, qmp, repo, base):
        """DIRTY rewritten, then the incremental by s3chain and by the
        OADP pipeline from the same changes"""
        rnd = random.Random(2)
        for piece in rnd.sample(range(DISK // MiB), DIRTY // MiB):
            hmp(self.vm, f'qemu-io -d vd0 "write -P {rnd.randrange(1, 255)} '
                f'{piece * MiB} 1M"')
        bitmap = oadp_bitmap(self.vm)
        # the host's page cache written back, as the kernel does within
        # 30 s of a write: else the pause of the backup's instant (QEMU's
        # stop flushes) pays for the benchmark's own writes, 1.5 s here
        os.sync()
        took, cpu, reqs, (_, client, result) = self.measured(
            self.s3chain_backup, runtime, qmp, repo)
        assert result['disks'][0]['type'] == 'incremental', result
        cpu['client'] = round(client, 2)
        oadp, _, _, (_, local) = self.measured(
            self.oadp, self.vm, DISK, f'{base}/oadp.qcow2', bitmap)
        return {'what': 'incremental', 'seconds': round(took, 2),
                'job-seconds': result['disks'][0]['duration'],
                'cpu': cpu, 'requests': reqs, 'oadp-seconds': round(oadp, 2),
                'oadp-local': local}


    def restore(self, repo):
        """The last point restored into a raw file: it must be the disk"""
        target = os.path.join(self.work, 'restored.raw')
        took, cpu, _, usage = self.measured(self.run_restore, repo, target)
        cpu['client'] = round(usage, 2)
        same = subprocess.run(['cmp', '-s', target, self.disk],
                              check=False).returncode == 0
        os.remove(target)
        assert same, 'the restored disk differs from the VM\'s'
        return {'what': 'restore', 'seconds': round(took, 2), 'cpu': cpu}

    def run_restore(self, repo, target):
        proc = subprocess.Popen(
            [S3CHAIN, 'restore', '--vm', 'bench', '--repo', repo,
             '--target', f'vd0={target}', '--format', 'raw', '--json',
             '--progress', 'none'], env=self.proc_env,
            stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, 'restore failed'
        return usage.ru_utime + usage.ru_stime


def report(rows):
    boto3 = [r for r in rows if r['what'] == 'boto3']
    full = [r for r in rows if r['what'] == 's3chain full']
    idle = [lat for r in rows if r['what'] == 'idle' for lat in r['latency']]
    busy = [lat for r in full for lat in r['latency']]
    loaded = [lat for r in boto3 for lat in r['latency']]
    inc = [r for r in rows if r['what'] == 'incremental'][0]
    restore = [r for r in rows if r['what'] == 'restore'][0]

    def med(rs, *path):
        values = []
        for r in rs:
            for p in path:
                r = r[p]
            values.append(r)
        return statistics.median(values)

    def spread(rs, key='seconds'):
        values = [r[key] for r in rs]
        return f'{min(values):.2f}-{max(values):.2f}'

    ms = 1000
    print(f'rounds: {len(full)}; times are medians (min-max)')
    print('guest write latency, ms   p50     p99     max    n')
    for name, lat in (('idle', idle), ('during boto3 upload', loaded),
                      ('during full backup', busy)):
        print(f'  {name:<22} {quantile(lat, .5) * ms:7.1f} '
              f'{quantile(lat, .99) * ms:7.1f} {max(lat) * ms:7.1f} '
              f'{len(lat):4d}')
    print(f'  p99 busy / idle: '
          f'{quantile(busy, .99) / quantile(idle, .99):.1f}x (target <= 2); '
          f'busy / during boto3 upload: '
          f'{quantile(busy, .99) / quantile(loaded, .99):.1f}x')
    b, f = med(boto3, 'seconds'), med(full, 'seconds')
    print(f'full backup {f:.2f} s ({spread(full)}), boto3 upload {b:.2f} s '
          f'({spread(boto3)}): {b / f:.2f} of boto3 (target >= 0.9)')
    print('CPU seconds       VM   sidecar  server  client')
    for name, rs in (('boto3', boto3), ('s3chain full', full)):
        print(f'  {name:<13} ' + ' '.join(
            f'{med(rs, "cpu", k):7.2f}'
            for k in ('vm', 'sidecar', 'server', 'client')))
    gib = DATA / GiB
    print(f'sidecar CPU-s per GiB / boto3 client\'s: '
          f'{med(full, "cpu", "sidecar") / gib:.2f} / '
          f'{med(boto3, "cpu", "client") / gib:.2f} = '
          f'{med(full, "cpu", "sidecar") / med(boto3, "cpu", "client"):.2f}x'
          ' (target <= 1.2)')
    print(f'the VM read {med(full, "requests", "vm-read") / GiB:.2f} GiB '
          f'for a full backup of {DATA / GiB:.0f} GiB of data on a '
          f'{DISK / GiB:.0f} GiB disk')
    puts, chunks = med(full, 'requests', 'PUT'), med(full, 'chunks')
    print(f'full backup: PUT {puts:.0f}, GET {med(full, "requests", "GET"):.0f}'
          f', waits for room {med(full, "requests", "room-waits"):.0f}, '
          f'chunks stored {chunks:.0f}: PUTs / chunks {puts / chunks:.3f}'
          ' (target <= 1.05)')
    print(f'incremental, {DIRTY // MiB} MiB dirty: s3chain {inc["seconds"]:.2f}'
          f' s (its job {inc["job-seconds"]:.2f} s), OADP pipeline '
          f'{inc["oadp-seconds"]:.2f} s '
          f'({inc["oadp-local"] // MiB} MiB staged): '
          f'{inc["oadp-seconds"] / inc["seconds"]:.2f}x faster (target >= 1.5);'
          f' PUT {inc["requests"]["PUT"]}, GET {inc["requests"]["GET"]}, '
          f'CPU {json.dumps(inc["cpu"])}')
    print(f'restore of it (8 GiB raw, {(DATA + DIRTY) / GiB:.0f} GiB of data '
          f'at most): {restore["seconds"]:.2f} s, CPU '
          f'{json.dumps(restore["cpu"])}')
    print('CPU seconds per GiB of data, by process:')
    print('                    VM  sidecar   server   client')
    for name, r, gib in (
            ('plain upload', {'cpu': {k: med(boto3, 'cpu', k) for k in
                                      ('vm', 'sidecar', 'server', 'client')}},
             DATA / GiB),
            ('full backup', {'cpu': {k: med(full, 'cpu', k) for k in
                                     ('vm', 'sidecar', 'server', 'client')}},
             DATA / GiB),
            ('incremental', inc, DIRTY / GiB),
            ('restore', restore, (DATA + DIRTY) / GiB)):
        print(f'  {name:<14} ' + ' '.join(
            f'{r["cpu"][k] / gib:8.2f}'
            for k in ('vm', 'sidecar', 'server', 'client')))


def main():
    env_file, work, prefix, rounds = sys.argv[1:5]
    bench = Bench(env_file, work, prefix)
    rows = bench.run(int(rounds))
    with open(os.path.join(work, 'rows.json'), 'w', encoding='utf-8') as f:
        json.dump(rows, f)
    report(rows)


if __name__ == '__main__':
    main()
