# Load: four VMs back up at once into one bucket through one running
# sidecar, then four restores run at once; every point is exact, the
# sidecar is left as it was, and the driver's own trace shows no request
# storm.
#
# Copyright (c) 2026 The s3chain authors
#
# SPDX-License-Identifier: GPL-2.0-or-later

import collections
import glob
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import unittest
from typing import Dict, List

from harness import (Bucket, DISKS, QEMU_IMG, Run, SIDECAR, VM, MiB,
                     command_env)
from qemu.qmp.legacy import QEMUMonitorProtocol

VMS = 4
ROUNDS = 3                      # a full backup, then incrementals
TRACE_LINE = re.compile(r's3chain_request req \S+ (\w+) s3://[^/]+/(\S+) '
                        r'range \d+\+(\d+) attempt (\d+)')


def requests(paths: List[str]) -> List[tuple]:
    """(method, key, bytes, attempt) of every request in the traces"""
    out = []
    for path in paths:
        with open(path, encoding='utf-8', errors='replace') as f:
            for line in f:
                m = TRACE_LINE.search(line)
                if m:
                    out.append((m[1], m[2], int(m[3]), int(m[4])))
    return out


class TestLoad(unittest.TestCase):
    def setUp(self) -> None:
        self.bucket = Bucket()
        self.dir = tempfile.mkdtemp(prefix='s3chain-test-', dir='/tmp')
        self.runtime = os.path.join(self.dir, 'run')
        self.vms: List[VM] = []
        for i in range(VMS):
            workdir = os.path.join(self.dir, f'vm{i}')
            os.mkdir(workdir)
            self.vms.append(VM(workdir))
        self.sidecar_trace = os.path.join(self.dir, 'sidecar.trace')
        self.sidecar_log = open(os.path.join(self.dir, 'sidecar.log'), 'w')
        self.sidecar = subprocess.Popen(
            [SIDECAR], stdout=self.sidecar_log, stderr=subprocess.STDOUT,
            env=command_env(self.bucket, S3CHAIN_RUNTIME_DIR=self.runtime,
                            S3CHAIN_QSD_TRACE='enable=s3chain_request,'
                                              f'file={self.sidecar_trace}'))
        self.qmp = os.path.join(self.runtime, 'qsd.qmp')
        while not os.path.exists(self.qmp):
            self.assertIsNone(self.sidecar.poll(), 'the sidecar ended')
            time.sleep(0.05)

    def tearDown(self) -> None:
        self.sidecar.kill()
        self.sidecar.wait()
        self.sidecar_log.close()
        for vm in self.vms:
            vm.shutdown()
        self.bucket.cleanup()
        shutil.rmtree(self.dir, ignore_errors=True)

    def in_turn(self, runs: List[Run]) -> int:
        """Waits for @runs, watching how many use the sidecar at once"""
        owners = self.qmp + '.owners'
        most = 0
        while any(r.proc.poll() is None for r in runs):
            if os.path.isdir(owners):
                most = max(most, len(os.listdir(owners)))
            time.sleep(0.02)
        for run in runs:
            code, err = run.finish()
            self.assertEqual(code, 0, err)
        return most

    def sidecar_holds(self) -> Dict[str, list]:
        """What a user of the sidecar checks that it still holds"""
        qmp = QEMUMonitorProtocol(self.qmp)
        qmp.connect()
        try:
            return {
                'nodes': [n['node-name'] for n in
                          qmp.cmd('query-named-block-nodes', flat=True)],
                'exports': qmp.cmd('query-block-exports'),
                'jobs': qmp.cmd('query-jobs'),
                'secrets': [o['name'] for o in
                            qmp.cmd('qom-list', path='/objects')
                            if o['name'].startswith(('s3chain-key-',
                                                       's3chain-token-'))],
            }
        finally:
            qmp.close()

    def backup_round(self, rnd: int) -> List[dict]:
        expected = []
        for i, vm in enumerate(self.vms):
            if rnd:
                # each VM's own changes, in places the others don't touch
                vm.write('vd0', f'-P {0x30 + 4 * rnd + i} {(rnd * 8 + i) * MiB}'
                                f' {3 * MiB}')
                vm.write('vd1', f'-P {0x60 + 4 * rnd + i} {(i * 4) * MiB}'
                                f' {MiB}')
            expected.append({d: vm.disk_bytes(d) for d in DISKS})
        runs = [self.backup_run(i) for i in range(VMS)]
        at_once = self.in_turn(runs)
        print(f'\nround {rnd}: {at_once} backups at once')
        self.assertGreater(at_once, 1, 'the backups never overlapped')
        points = []
        for i, run in enumerate(runs):
            result = run.result()
            self.assertEqual({d['type'] for d in result['disks']},
                             {'full' if rnd == 0 else 'incremental'})
            points.append({'backup': result['backup'],
                           'bytes': expected[i]})
        return points

    def backup_run(self, i: int) -> Run:
        return Run(['backup', '--vm', f'vm{i}', '--qmp',
                    self.vms[i].qmp_socket, '--repo', self.bucket.repo,
                    '--runtime-dir', self.runtime, '--sidecar-qmp', self.qmp,
                    '--json'], command_env(self.bucket))

    def assertPoint(self, i: int, backup: str, expected: Dict[str, bytes]):
        for disk, want in expected.items():
            target = os.path.join(self.dir, f'vm{i}-{disk}.raw')
            run = Run(['restore', '--vm', f'vm{i}', '--repo',
                       self.bucket.repo, '--backup', backup, '--json',
                       '--target', f'{disk}={target}'],
                      command_env(self.bucket))
            code, err = run.finish()
            self.assertEqual(code, 0, err)
            with open(target, 'rb') as f:
                self.assertTrue(f.read() == want,
                                f'vm{i} {disk} differs from the disk at '
                                f'backup {backup}')
            os.remove(target)

    def test_one_killed_among_others(self) -> None:
        """A command killed while others use the sidecar: the next one
        removes what the dead one left, and nothing of the live ones"""
        expected = [{d: vm.disk_bytes(d) for d in DISKS} for vm in self.vms]
        live, doomed = self.backup_run(0), self.backup_run(1)
        live.wait_started()
        # stopped as its copy starts, the live one holds no turn at the
        # socket (it would at its commit), but lives
        os.kill(live.proc.pid, signal.SIGSTOP)
        doomed.wait_started()
        doomed.proc.kill()
        doomed.proc.communicate()
        try:
            third = self.backup_run(2)
            code, err = third.finish()
            self.assertEqual(code, 0, err)
        finally:
            os.kill(live.proc.pid, signal.SIGCONT)
        self.assertIn('cleaned up the sidecar after a killed command', err)
        cleaned = [e for e in third.events if e['event'] == 'cleaned-up']
        items = ' '.join(cleaned[0]['items'])
        self.assertIn(f'removed export s3c0-{doomed.proc.pid}', items)
        self.assertNotIn(str(live.proc.pid), items)
        code, err = live.finish()
        self.assertEqual(code, 0, err)

        again = self.backup_run(1)
        code, err = again.finish()
        self.assertEqual(code, 0, err)
        self.assertIn('cleaned up the VM after a killed command', err)
        for i, run in ((0, live), (1, again), (2, third)):
            self.assertPoint(i, run.result()['backup'], expected[i])

        # the commands share the sidecar's one NBD server: serving at
        # another address is refused, and says where it listens
        run = Run(['serve', '--vm', 'vm0', '--repo', self.bucket.repo,
                   '--disk', 'vd0', '--sidecar-qmp', self.qmp,
                   '--runtime-dir', self.runtime, '--listen',
                   f'unix:{self.dir}/elsewhere.sock', '--json'],
                  command_env(self.bucket))
        code, err = run.finish()
        self.assertEqual(code, 2, err)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertIn(f'already listens at unix:{self.runtime}/'
                      's3chain-nbd.sock', err)
        self.assertEqual(self.sidecar_holds(),
                         {'nodes': [], 'exports': [], 'jobs': [],
                          'secrets': []})

    def test_four_vms_through_one_sidecar(self) -> None:
        chains: List[List[dict]] = [[] for _ in self.vms]
        for rnd in range(ROUNDS):
            for i, point in enumerate(self.backup_round(rnd)):
                chains[i].append(point)

        # the sidecar is as the commands found it, and still serves
        held = self.sidecar_holds()
        self.assertEqual(held, {'nodes': [], 'exports': [], 'jobs': [],
                                'secrets': []})
        self.assertEqual(os.listdir(self.qmp + '.owners'), [])
        self.assertIsNone(self.sidecar.poll())

        stored = self.stored_sizes()
        backup_requests = requests([self.sidecar_trace])
        self.check_backup_requests(backup_requests, stored)

        # four restores at once, at every point; qemu-img traced
        traces = os.path.join(self.dir, 'qemu-img-traces')
        os.mkdir(traces)
        wrapper = os.path.join(self.dir, 'qemu-img')
        with open(wrapper, 'w', encoding='utf-8') as f:
            f.write(f'#!/bin/sh\nexec {QEMU_IMG} --trace enable='
                    f's3chain_request,file={traces}/$$ "$@"\n')
        os.chmod(wrapper, 0o755)
        for rnd in range(ROUNDS):
            runs, targets = [], []
            for i in range(VMS):
                target = {d: os.path.join(self.dir, f'vm{i}-{d}.raw')
                          for d in DISKS}
                targets.append(target)
                runs.append(Run(
                    ['restore', '--vm', f'vm{i}', '--repo', self.bucket.repo,
                     '--backup', chains[i][rnd]['backup'], '--json',
                     *[f'--target={d}={p}' for d, p in target.items()]],
                    command_env(self.bucket, S3CHAIN_QEMU_IMG=wrapper)))
            for run in runs:
                code, err = run.finish()
                self.assertEqual(code, 0, err)
            for i in range(VMS):
                for disk, path in targets[i].items():
                    with open(path, 'rb') as f:
                        got = f.read()
                    os.remove(path)
                    want = chains[i][rnd]['bytes'][disk]
                    self.assertTrue(
                        got == want, f'vm{i} {disk} at point {rnd} differs '
                                     'from the disk at its instant')
        self.check_restore_requests(
            requests(glob.glob(os.path.join(traces, '*'))), stored)

    def stored_sizes(self) -> Dict[str, int]:
        out = {}
        pages = self.bucket.client.get_paginator('list_objects_v2').paginate(
            Bucket=self.bucket.name, Prefix=self.bucket.prefix + '/')
        for page in pages:
            for obj in page.get('Contents', []):
                out[obj['Key']] = obj['Size']
        return out

    def check_backup_requests(self, reqs: List[tuple],
                              stored: Dict[str, int]) -> None:
        """Each object is written about once: no retries on a healthy
        server, no image rewritten over and over"""
        puts = [k for m, k, _, _ in reqs if m == 'PUT']
        print(f'\nbackups: {len(reqs)} requests, {len(puts)} PUTs for '
              f'{len(stored)} objects; by method '
              f'{dict(collections.Counter(m for m, _, _, _ in reqs))}')
        self.assertEqual([r for r in reqs if r[3] > 1], [])
        self.assertLessEqual(len(puts), 2 * len(stored))

    def check_restore_requests(self, reqs: List[tuple],
                               stored: Dict[str, int]) -> None:
        """Each restore reads its chain about once, in ranges far larger
        than a block, and nothing is retried"""
        gets = [size for m, _, size, _ in reqs if m == 'GET']
        print(f'restores: {len(reqs)} requests, {len(gets)} GETs of '
              f'{sum(gets) // MiB} MiB')
        self.assertEqual([r for r in reqs if r[3] > 1], [])
        # each round restores every VM's chain up to that round's point
        self.assertLessEqual(sum(gets), 1.25 * ROUNDS * sum(stored.values()))
        self.assertLessEqual(len(gets),
                             sum(gets) // (256 * 1024) + 50 * ROUNDS * VMS)


if __name__ == '__main__':
    unittest.main()
