#!/usr/bin/env python3
"""Incremental backup of a running VM's disk with 64 MiB dirty, at several
disk sizes, three ways in the same run and against the same radosgw:

- s3chain: `s3chain backup` through the sidecar into the bucket;
- restic (Debian's package) backing up the raw disk image, reading the
  whole volume as kopia does in Velero;
- the OADP temp-volume pipeline: blockdev-backup sync=incremental into a
  local qcow2, then a parallel multipart upload of that file.

Reports wall time, bytes uploaded, local temporary bytes and the sidecar's
peak RSS.  Usage: incremental-backup.py ENV_FILE WORKDIR PREFIX SIZE_GIB...
"""

# SPDX-License-Identifier: GPL-2.0-or-later
import json
import os
import random
import subprocess
import sys
import time

from vmbench import GiB, MiB, BucketBench, dirty, oadp_bitmap, start_vm

DATA = 512 * MiB        # what the disk holds before the backups
DIRTY = 64 * MiB        # what changes between them


class Bench(BucketBench):
    def __init__(self, env_file, work, prefix):
        super().__init__(env_file, work, prefix,
                         RESTIC_PASSWORD='bench-only')


    def restic(self, repo, *args):
        start = time.monotonic()
        out = subprocess.run(['restic', '-r', repo, '--json', *args],
                             env=self.proc_env, check=True,
                             capture_output=True, text=True)
        took = time.monotonic() - start
        summary = {}
        for line in out.stdout.splitlines():
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get('message_type') == 'summary':
                summary = msg
        return took, summary

    def run(self, size_gib):
        size = size_gib * GiB
        disk = os.path.join(self.work, 'disk.raw')
        with open(disk, 'wb') as f:
            f.truncate(size)
            rnd = random.Random(1)
            for i in range(DATA // (16 * MiB)):
                f.seek(rnd.randrange(0, (size - 16 * MiB) // MiB) * MiB)
                f.write(os.urandom(16 * MiB))
        self.vm = start_vm(self.work, disk, 'raw')
        runtime, qmp = self.start_sidecar()
        base = f'{self.prefix}/{size_gib}g'
        repo = f's3://{self.bucket}/{base}/s3chain'
        restic_repo = (f's3:{self.env["S3CHAIN_ENDPOINT"]}/{self.bucket}/'
                       f'{base}/restic')
        try:
            self.s3chain_backup(runtime, qmp, repo)
            self.restic(restic_repo, 'init')
            self.restic(restic_repo, 'backup', disk)
            dirty(self.vm, size, DIRTY, random.Random(size))
            # the OADP pipeline gets the same changes, in a bitmap of its own
            oadp_bitmap(self.vm)

            before = self.stored_bytes(f'{base}/s3chain/')
            s3c_time, _, result = self.s3chain_backup(runtime, qmp, repo)
            s3c_bytes = self.stored_bytes(f'{base}/s3chain/') - before
            rss = self.sidecar_peak_rss()
            assert result['disks'][0]['type'] == 'incremental', result

            before = self.stored_bytes(f'{base}/restic/')
            restic_time, _ = self.restic(restic_repo, 'backup', disk)
            restic_bytes = self.stored_bytes(f'{base}/restic/') - before

            oadp_time, oadp_local = self.oadp(self.vm, size,
                                              f'{base}/oadp.qcow2',
                                              'oadp-bitmap')
            oadp_bytes = self.stored_bytes(f'{base}/oadp.qcow2')
        finally:
            self.stop_sidecar()
            self.vm.shutdown()
            os.remove(disk)
        return {
            'size-gib': size_gib,
            's3chain': {'seconds': round(s3c_time, 2), 'uploaded': s3c_bytes,
                        'local-temp': 0, 'sidecar-peak-rss': rss},
            'restic': {'seconds': round(restic_time, 2),
                       'uploaded': restic_bytes, 'local-temp': 0},
            'oadp': {'seconds': round(oadp_time, 2), 'uploaded': oadp_bytes,
                     'local-temp': oadp_local},
        }


def main():
    env_file, work, prefix = sys.argv[1:4]
    bench = Bench(env_file, work, prefix)
    rows = [bench.run(int(s)) for s in sys.argv[4:]]
    print(json.dumps(rows, indent=1))
    print()
    print(f'{"disk":>6} {"s3chain s":>10} {"restic s":>9} {"oadp s":>7} '
          f'{"restic/s3c":>10} {"oadp/s3c":>9} {"s3c MiB up":>10} '
          f'{"restic MiB":>10} {"oadp MiB":>8} {"oadp temp":>9} '
          f'{"qsd RSS":>8}')
    for r in rows:
        s, t, o = r['s3chain'], r['restic'], r['oadp']
        print(f'{r["size-gib"]:>4}G {s["seconds"]:>10.2f} '
              f'{t["seconds"]:>9.2f} {o["seconds"]:>7.2f} '
              f'{t["seconds"] / s["seconds"]:>10.1f} '
              f'{o["seconds"] / s["seconds"]:>9.1f} '
              f'{s["uploaded"] / MiB:>10.0f} {t["uploaded"] / MiB:>10.0f} '
              f'{o["uploaded"] / MiB:>8.0f} {o["local-temp"] / MiB:>8.0f}M '
              f'{s["sidecar-peak-rss"] / MiB:>7.0f}M')
    first, last = rows[0]['s3chain'], rows[-1]['s3chain']
    print(f'\ns3chain time, {rows[-1]["size-gib"]}G over '
          f'{rows[0]["size-gib"]}G: {last["seconds"] / first["seconds"]:.2f}x')


if __name__ == '__main__':
    main()
