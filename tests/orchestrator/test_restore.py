# `s3chain restore`, `list`, `verify` and `serve` against the real radosgw,
# real qemu-system VMs, our sidecar and the real binary, on one chain of a
# full and five incremental backups of two disks.
#
# Copyright (c) 2026 The s3chain authors
#
# SPDX-License-Identifier: GPL-2.0-or-later

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest
from typing import Dict, List, Optional

from harness import (DISKS, MiB, QEMU_IMG, QSD, S3CHAIN, STOCK_QEMU,
                     Bucket, QEMUMachine, Run, VM, command_env)
# harness puts scripts/ on the path
from request_trace import gets, traced_qemu_img  # noqa: E402

# what the guest writes before each backup after the full one
WRITES = [
    [('vd0', '-P 0x11 3M 1M'), ('vd1', '-P 0x12 60M 512')],
    [('vd0', '-z 8M 2M'), ('vd1', '-P 0x13 0 4M')],
    [('vd0', '-P 0x14 100M 64k'), ('vd0', '-P 0x15 127M 1M')],
    [('vd1', '-z 16M 5M'), ('vd0', '-P 0x16 64M 3M')],
    [('vd0', '-P 0x17 0 512'), ('vd1', '-P 0x18 33M 7M')],
]


class Chain:
    """A VM and its chain in the bucket, with each point's bytes; with
    @encrypted, its backups encrypted and compressed under a key of its
    own, which every command is given (key_args)"""

    def __init__(self, encrypted: bool = False) -> None:
        self.bucket = Bucket()
        self.dir = tempfile.mkdtemp(prefix='s3chain-restore-', dir='/tmp')
        self.runtime = os.path.join(self.dir, 'run')
        self.vm = VM(self.dir)
        self.env = command_env(self.bucket)
        self.points: List[str] = []
        self.expected: Dict[str, Dict[str, bytes]] = {}
        self.key_args: List[str] = []
        first = []
        if encrypted:
            self.key = os.urandom(32)
            key_file = os.path.join(self.dir, 'key')
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT, 0o600)
            with os.fdopen(fd, 'wb') as f:
                f.write(self.key)
            self.key_args = ['--key-file', key_file]
            first = ['--encrypt', '--compress', 'zstd']
        for writes in [[]] + WRITES:
            for disk, args in writes:
                self.vm.write(disk, args)
            run = Run(['backup', '--vm', 'vm1', '--qmp', self.vm.qmp_socket,
                       '--repo', self.bucket.repo, '--runtime-dir',
                       self.runtime, '--json', *self.key_args,
                       *(first if not self.points else [])], self.env)
            code, err = run.finish()
            assert code == 0, err
            point = run.result()['backup']
            self.points.append(point)
            self.expected[point] = {d: self.vm.disk_bytes(d) for d in DISKS}
        self.vm.shutdown()

    def image(self, point: str, disk: str) -> str:
        return (f'{self.bucket.prefix}/s3chain/vms/vm1/disks/{disk}/'
                f'{point}.qcow2')

    def chunks(self, point: str, disk: str) -> List[str]:
        prefix = self.image(point, disk) + '.d/'
        return sorted(k for k in self.bucket.objects() if k.startswith(prefix))

    def cleanup(self) -> None:
        self.bucket.cleanup()
        shutil.rmtree(self.dir, ignore_errors=True)


# The chain that the classes which only read it (and add nothing to its
# bucket) share: each chain is six backups of a VM, and the suite must
# fit in CI's time
shared: Dict[str, Chain] = {}


def tearDownModule() -> None:  # pylint: disable=invalid-name
    for chain in shared.values():
        chain.cleanup()


class RestoreTestCase(unittest.TestCase):
    chain: Chain
    # a class whose tests damage the chain or add to its bucket, or that
    # wants it encrypted, builds one of its own with these options to Chain
    own_chain: Optional[Dict[str, bool]] = None

    @classmethod
    def setUpClass(cls) -> None:
        if cls.own_chain is not None:
            cls.chain = Chain(**cls.own_chain)
        else:
            if 'plain' not in shared:
                shared['plain'] = Chain()
            cls.chain = shared['plain']

    @classmethod
    def tearDownClass(cls) -> None:
        if cls.own_chain is not None:
            cls.chain.cleanup()

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix='s3chain-target-', dir='/tmp')
        self.machines: List[QEMUMachine] = []

    def tearDown(self) -> None:
        for m in self.machines:
            m.shutdown()
        shutil.rmtree(self.dir, ignore_errors=True)

    def s3chain(self, command: str, *args: str, env=None,
                repo: Optional[str] = None) -> Run:
        argv = [command, '--repo', repo or self.chain.bucket.repo, '--json',
                *self.chain.key_args]
        if command in ('restore', 'serve') and '--vm' not in args:
            argv += ['--vm', 'vm1']
        return Run(argv + list(args), env or self.chain.env)

    def ok(self, command: str, *args: str) -> Run:
        run = self.s3chain(command, *args)
        code, err = run.finish()
        self.assertEqual(code, 0, err)
        return run

    def assertBytes(self, got: bytes, expected: bytes, what: str) -> None:
        self.assertEqual(len(got), len(expected), what)
        if got != expected:
            first = next(i for i in range(len(expected))
                         if got[i] != expected[i])
            self.fail(f'{what} differs from the disk at its instant, first '
                      f'at byte {first}')

    def secret_object(self) -> List[str]:
        """qemu-img's options for the bucket's secret key as QEMU secret
        s3chain-key, in a 0600 file of the test's directory"""
        secret = os.path.join(self.dir, 'secret')
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, 'w') as f:
            f.write(self.chain.bucket.env['AWS_SECRET_ACCESS_KEY'])
        return ['--object', f'secret,id=s3chain-key,file={secret}']

    def read_image(self, path: str, fmt: str) -> bytes:
        raw = os.path.join(self.dir, 'read.raw')
        subprocess.run([QEMU_IMG, 'convert', '-U', '-f', fmt, '-O', 'raw',
                        path, raw], check=True)
        with open(raw, 'rb') as f:
            data = f.read()
        os.remove(raw)
        return data

    def start_vm(self, name: str, blockdev: str,
                 qmp: Optional[str] = None) -> QEMUMachine:
        args = ['-nodefaults', '-display', 'none', '-accel', 'tcg',
                '-device', 'virtio-scsi-pci,id=scsi0', '-blockdev', blockdev,
                '-device', f'scsi-hd,id={name},drive=d0']
        if qmp:
            args += ['-qmp', f'unix:{qmp},server=on,wait=off']
        m = QEMUMachine(STOCK_QEMU, args=args, base_temp_dir=self.dir)
        m.launch()
        self.machines.append(m)
        return m

    def serve(self, *args: str) -> Run:
        sock = os.path.join(self.dir, 'serve.sock')
        run = self.s3chain('serve', '--listen', f'unix:{sock}',
                           '--runtime-dir', os.path.join(self.dir, 'run'),
                           *args)
        ready = run.wait_event('ready')
        self.assertEqual(ready['uri'],
                         f'nbd+unix:///{ready["disk"]}?socket={sock}')
        return run

    def stop(self, run: Run) -> None:
        for m in self.machines:
            m.shutdown()
        self.machines = []
        run.proc.send_signal(signal.SIGTERM)
        code, err = run.finish()
        self.assertEqual(code, 0, err)

    def assertServed(self, point: str, disk: str) -> None:
        """A VM reads @disk at @point, served read-only, as it was"""
        run = self.serve('--backup', point, '--disk', disk)
        sock = os.path.join(self.dir, 'serve.sock')
        m = self.start_vm(disk, f'driver=nbd,node-name=d0,server.type=unix,'
                                f'server.path={sock},export={disk},'
                                f'read-only=on')
        self.assertBytes(self.vm_reads(m), self.chain.expected[point][disk],
                         f'the served {disk}')
        self.stop(run)

    def vm_reads(self, m: QEMUMachine) -> bytes:
        """Every byte of the VM's disk, as the VM reads it"""
        sock = os.path.join(self.dir, f'export-{len(self.machines)}.sock')
        if not m.cmd('query-block-exports'):
            m.cmd('nbd-server-start', addr={'type': 'unix',
                                            'data': {'path': sock}})
            m.cmd('block-export-add', type='nbd', id='e', node_name='d0',
                  name='d0')
        else:
            sock = self.vm_export_socket
        self.vm_export_socket = sock
        return self.read_image(f'nbd+unix:///d0?socket={sock}', 'raw')


def loop_device(path: str, size: int) -> Optional[str]:
    with open(path, 'wb') as f:
        f.truncate(size)
    p = subprocess.run(['losetup', '-f', '--show', path],
                       capture_output=True, text=True)
    return p.stdout.strip() if p.returncode == 0 else None


class TestRestore(RestoreTestCase):
    def test_every_point_to_raw_files(self) -> None:
        for point in self.chain.points:
            targets = {d: os.path.join(self.dir, f'{d}.raw') for d in DISKS}
            run = self.ok('restore', '--backup', point,
                          *[f'--target={d}={p}' for d, p in targets.items()])
            result = run.result()
            self.assertEqual(result['backup'], point)
            self.assertEqual({d['name']: d['target']
                              for d in result['disks']}, targets)
            progress = [e for e in run.events if e['event'] == 'progress']
            self.assertEqual(progress[-1]['bytes-done'], sum(DISKS.values()))
            for disk, path in targets.items():
                with open(path, 'rb') as f:
                    self.assertBytes(f.read(), self.chain.expected[point][disk],
                                     f'{disk} at {point}')
                os.remove(path)

    def test_children_get_no_credentials(self) -> None:
        """qemu-img gets the key as a secret object, not in its
        environment"""
        envs = os.path.join(self.dir, 'envs')
        wrapper = os.path.join(self.dir, 'qemu-img')
        with open(wrapper, 'w') as f:
            f.write(f'#!/bin/sh\nenv >> {envs}\nexec {QEMU_IMG} "$@"\n')
        os.chmod(wrapper, 0o755)
        target = os.path.join(self.dir, 'vd0.raw')
        run = self.s3chain('restore', '--target', f'vd0={target}',
                           env=dict(self.chain.env, S3CHAIN_QEMU_IMG=wrapper))
        code, err = run.finish()
        self.assertEqual(code, 0, err)
        with open(target, 'rb') as f:
            self.assertBytes(f.read(), self.chain.expected[
                self.chain.points[-1]]['vd0'], 'vd0 at the last point')
        with open(envs) as f:
            seen = f.read()
        self.assertIn('S3CHAIN_QEMU_IMG=', seen)
        self.assertNotIn('AWS_SECRET_ACCESS_KEY', seen)
        self.assertNotIn(self.chain.env['AWS_SECRET_ACCESS_KEY'], seen)

    def test_progress_bar(self) -> None:
        """For people: rate, time left, and a line of its own"""
        target = os.path.join(self.dir, 'vd0.raw')
        run = Run(['restore', '--vm', 'vm1', '--repo', self.chain.bucket.repo,
                   '--progress', 'bar', '--target', f'vd0={target}'],
                  self.chain.env)
        code, err = run.finish()
        self.assertEqual(code, 0, err)
        # (text mode reads the bar's carriage returns as line ends)
        lines = err.splitlines()
        bars = [line for line in lines if line.startswith('[')]
        self.assertTrue(bars, err)
        self.assertRegex(bars[-1], r'^\[#{40}\] 100% 128/128 MiB  [\d.]+ '
                         r'MiB/s  in \d+:\d\d  $')
        self.assertIn(f'backup {self.chain.points[-1]} of VM vm1 restored',
                      lines)

    def test_every_point_to_qcow2(self) -> None:
        for point in self.chain.points:
            for disk in DISKS:
                path = os.path.join(self.dir, f'{disk}.qcow2')
                self.ok('restore', '--backup', point, '--format', 'qcow2',
                        '--target', f'{disk}={path}')
                info = json.loads(subprocess.run(
                    [QEMU_IMG, 'info', '--output=json', path],
                    check=True, capture_output=True).stdout)
                self.assertEqual(info['format'], 'qcow2')
                self.assertNotIn('backing-filename', info)
                # the chain's holes stay holes
                self.assertLess(info['actual-size'], DISKS[disk])
                self.assertBytes(self.read_image(path, 'qcow2'),
                                 self.chain.expected[point][disk],
                                 f'{disk} at {point} in qcow2')
                os.remove(path)

    def test_every_point_to_a_block_device(self) -> None:
        backing = os.path.join(self.dir, 'loop.img')
        dev = loop_device(backing, DISKS['vd0'] + 4 * MiB)
        if not dev:
            self.skipTest('no loop device here')
        try:
            for point in self.chain.points:
                # stale bytes everywhere, which the restore must overwrite
                with open(dev, 'wb') as f:
                    f.write(b'\xee' * (DISKS['vd0'] + 4 * MiB))
                self.ok('restore', '--backup', point, '--target',
                        f'vd0={dev}')
                with open(dev, 'rb') as f:
                    got = f.read(DISKS['vd0'])
                self.assertBytes(got, self.chain.expected[point]['vd0'],
                                 f'vd0 at {point} on {dev}')
        finally:
            subprocess.run(['losetup', '-d', dev], check=True)

    def test_latest_and_before(self) -> None:
        path = os.path.join(self.dir, 'vd1.raw')
        run = self.ok('restore', '--target', f'vd1={path}')
        self.assertEqual(run.result()['backup'], self.chain.points[-1])
        with open(path, 'rb') as f:
            self.assertBytes(f.read(),
                             self.chain.expected[self.chain.points[-1]]['vd1'],
                             'vd1 at latest')
        os.remove(path)

        catalog = self.chain.bucket.catalog()
        third = catalog['backups'][3]['time']
        run = self.ok('restore', '--before', third, '--target',
                      f'vd1={path}')
        self.assertEqual(run.result()['backup'], self.chain.points[2])
        with open(path, 'rb') as f:
            self.assertBytes(f.read(),
                             self.chain.expected[self.chain.points[2]]['vd1'],
                             'vd1 before the fourth backup')

    def test_target_without_direct_io(self) -> None:
        """On a file system that refuses O_DIRECT (ramfs), the restore
        writes through the page cache, flushed, and is exact"""
        mnt = os.path.join(self.dir, 'ramfs')
        os.mkdir(mnt)
        if subprocess.run(['mount', '-t', 'ramfs', 'ramfs', mnt],
                          capture_output=True).returncode:
            self.skipTest('cannot mount a ramfs here')
        try:
            path, probe = (os.path.join(mnt, n) for n in ('vd1.raw', 'p'))
            with self.assertRaises(OSError):
                os.close(os.open(probe, os.O_WRONLY | os.O_CREAT |
                                 os.O_DIRECT))
            if os.path.exists(probe):
                os.remove(probe)
            point = self.chain.points[-2]
            self.ok('restore', '--backup', point, '--target', f'vd1={path}')
            with open(path, 'rb') as f:
                self.assertBytes(f.read(), self.chain.expected[point]['vd1'],
                                 'vd1 restored onto ramfs')
            self.assertEqual(os.listdir(mnt), ['vd1.raw'])
        finally:
            subprocess.run(['umount', mnt], check=True)

    def test_chain_fetches_only_what_shows(self) -> None:
        """A restore of the chain's last point fetches none of what the
        incrementals above the full backup rewrote (3M-4M, 8M-10M,
        64M-67M of vd0), and less of the full than it stores"""
        last, full = self.chain.points[-1], self.chain.points[0]
        wrapper, traces = traced_qemu_img(QEMU_IMG, self.dir)
        target = os.path.join(self.dir, 'vd0.raw')
        run = self.s3chain('restore', '--backup', last, '--target',
                           f'vd0={target}', env=dict(self.chain.env,
                                                     S3CHAIN_QEMU_IMG=wrapper))
        code, err = run.finish()
        self.assertEqual(code, 0, err)
        with open(target, 'rb') as f:
            self.assertBytes(f.read(), self.chain.expected[last]['vd0'],
                             'the restored disk')

        image = self.chain.image(full, 'vd0')
        manifest = json.loads(self.chain.bucket.client.get_object(
            Bucket=self.chain.bucket.name, Key=image)['Body'].read())
        chunk = manifest['chunk-size']
        [convert] = [n for n in os.listdir(traces) if n.startswith('convert')]
        fetched = [
            (int(url.rsplit('/', 1)[1].split('.')[0], 16) * chunk + start,
             length)
            for url, start, length in gets(os.path.join(traces, convert))
            if f'/{image}.d/' in url]
        stored = sum(o['Size'] for o in self.chain.bucket.client
                     .list_objects_v2(Bucket=self.chain.bucket.name,
                                      Prefix=image + '.d/')['Contents'])
        self.assertLess(sum(n for _, n in fetched), stored - 6 * MiB)

        host = self.host_extents(image)
        for start, end in ((3 * MiB, 4 * MiB), (8 * MiB, 10 * MiB),
                           (64 * MiB, 67 * MiB)):
            for guest, length, offset in host:
                lo, hi = max(start, guest), min(end, guest + length)
                if lo >= hi:
                    continue
                shadowed = (offset + lo - guest, offset + hi - guest)
                for f_start, f_len in fetched:
                    self.assertFalse(
                        f_start < shadowed[1] and
                        shadowed[0] < f_start + f_len,
                        f'guest bytes {lo}-{hi} of the full backup, '
                        f'rewritten above it, were fetched')

    def host_extents(self, image: str) -> List[tuple]:
        """(guest offset, length, host offset) of the data of @image"""
        bucket = self.chain.bucket
        name = 'json:' + json.dumps({
            'driver': 'qcow2', 'backing': None,
            'file': {'driver': 's3chain', 'endpoint': bucket.endpoint,
                     'bucket': bucket.name, 'key': image,
                     'access-key-id': bucket.env['AWS_ACCESS_KEY_ID'],
                     'key-secret': 's3chain-key'}})
        out = subprocess.run([QEMU_IMG, 'map', '--output=json',
                              *self.secret_object(), name],
                             check=True, capture_output=True, text=True)
        return [(e['start'], e['length'], e['offset'])
                for e in json.loads(out.stdout) if e['data']]


class TestList(RestoreTestCase):
    def test_json_matches_the_backups(self) -> None:
        run = self.ok('list')
        vms = run.result()['vms']
        self.assertEqual([v['vm'] for v in vms], ['vm1'])
        backups = vms[0]['backups']
        self.assertEqual([b['id'] for b in backups], self.chain.points)
        self.assertEqual([b['type'] for b in backups],
                         ['full'] + ['incremental'] * 5)
        for i, b in enumerate(backups):
            for d in b['disks']:
                self.assertEqual(d['virtual-size'], DISKS[d['name']])
                self.assertEqual(d['parent'],
                                 self.chain.points[i - 1] if i else None)
                self.assertGreater(d['bytes-stored'], 0)
        # the full backup stores the data, an increment its changes
        self.assertGreater(backups[0]['disks'][0]['bytes-stored'], 64 * MiB)
        self.assertLess(backups[1]['disks'][0]['bytes-stored'], 16 * MiB)

    def test_table(self) -> None:
        p = subprocess.run([S3CHAIN, 'list', '--repo', self.chain.bucket.repo,
                            '--vm', 'vm1'], env=self.chain.env,
                           capture_output=True, text=True)
        self.assertEqual(p.returncode, 0, p.stderr)
        lines = p.stdout.splitlines()
        self.assertEqual(lines[0].split()[:3], ['VM', 'BACKUP', 'TIME'])
        rows = [line.split() for line in lines[1:]]
        self.assertEqual([r[1] for r in rows if r[0] == 'vm1'],
                         self.chain.points)
        self.assertEqual(len(rows), 2 * len(self.chain.points))

    def test_unknown_vm(self) -> None:
        run = self.s3chain('list', '--vm', 'nosuchvm')
        code, err = run.finish()
        self.assertEqual(code, 4, err)
        self.assertIn('nosuchvm', err)


class TestVerify(RestoreTestCase):
    own_chain: Dict[str, bool] = {}

    def verify(self, *args: str) -> dict:
        run = self.s3chain('verify', '--vm', 'vm1', *args)
        code, err = run.finish()
        result = run.result()
        self.assertEqual(code, 0 if result['intact'] else 11, err)
        return result

    def damaged(self, key: str, broken_point: str, disk: str) -> None:
        """verify names @key, restore refuses before writing"""
        for mode in ((), ('--deep',)):
            result = self.verify(*mode)
            self.assertFalse(result['intact'], mode)
            fault = result['faults'][0]
            self.assertEqual(len(result['faults']), 1, result['faults'])
            self.assertEqual(fault['object'],
                             f's3://{self.chain.bucket.name}/{key}', mode)
            self.assertEqual((fault['backup'], fault['disk']),
                             (broken_point, disk))
            i = self.chain.points.index(broken_point)
            self.assertEqual(fault['affected'], self.chain.points[i:])

        target = os.path.join(self.dir, 'never.raw')
        run = self.s3chain('restore', '--backup', self.chain.points[-1],
                           '--target', f'{disk}={target}')
        code, err = run.finish()
        self.assertEqual(code, 11, err)
        self.assertIn(key, err)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertFalse(os.path.exists(target))

        # the points before it are whole
        if i:
            self.ok('restore', '--backup', self.chain.points[i - 1],
                    '--target', f'{disk}={target}')

    def test_good_chain(self) -> None:
        for mode in ((), ('--deep',)):
            result = self.verify(*mode)
            self.assertTrue(result['intact'])
            self.assertEqual(result['images'], 2 * len(self.chain.points))
            self.assertEqual(result['faults'], [])

    @contextlib.contextmanager
    def put_back(self, key: str):
        """Yields the object at @key, which is as it was afterwards"""
        bucket = self.chain.bucket
        got = bucket.client.get_object(Bucket=bucket.name, Key=key)
        body, ctype = got['Body'].read(), got['ContentType']
        try:
            yield body
        finally:
            bucket.client.put_object(Bucket=bucket.name, Key=key, Body=body,
                                     ContentType=ctype,
                                     Metadata=got['Metadata'])

    def test_chunk_deleted(self) -> None:
        point = self.chain.points[2]
        key = self.chain.chunks(point, 'vd0')[0]
        with self.put_back(key):
            self.chain.bucket.delete(key)
            self.damaged(key, point, 'vd0')

    def test_chunk_bytes_changed(self) -> None:
        point = self.chain.points[1]
        key = self.chain.chunks(point, 'vd1')[-1]
        with self.put_back(key) as body:
            self.chain.bucket.put(key, body[:100] + bytes([body[100] ^ 1]) +
                                  body[101:])
            self.damaged(key, point, 'vd1')

    def test_parent_manifest_removed(self) -> None:
        point = self.chain.points[3]
        key = self.chain.image(point, 'vd1')
        with self.put_back(key):
            self.chain.bucket.delete(key)
            self.damaged(key, point, 'vd1')

    def only_deep_finds(self, chunk: str, point: str, disk: str,
                        what: str) -> None:
        """A quick verify passes; a deep one finds one fault, in @chunk of
        @disk at @point, naming @what; a restore of @disk at @point exits
        11 naming @chunk and leaves no target"""
        self.assertTrue(self.verify()['intact'])
        result = self.verify('--deep')
        self.assertEqual(len(result['faults']), 1, result['faults'])
        fault = result['faults'][0]
        self.assertEqual(fault['object'],
                         f's3://{self.chain.bucket.name}/{chunk}')
        self.assertIn(what, fault['message'])
        self.assertEqual((fault['backup'], fault['disk']), (point, disk))

        target = os.path.join(self.dir, f'{disk}.raw')
        run = self.s3chain('restore', '--backup', point,
                           '--target', f'{disk}={target}')
        code, err = run.finish()
        self.assertEqual(code, 11, err)
        # told by the driver's marker (block/s3chain-format.h)
        self.assertIn(f's3chain: damaged: chunk s3://{self.chain.bucket.name}'
                      f'/{chunk} does not match its checksum', err)
        self.assertFalse(os.path.exists(target))

    def test_manifest_checksum_wrong(self) -> None:
        """A chunk is intact but its manifest's CRC-32 is not: only a deep
        verify reads the bytes, and it names the chunk; a restore that
        reads the chunk fails as damaged and leaves no target"""
        point = self.chain.points[4]
        key = self.chain.image(point, 'vd0')
        chunk = self.chain.chunks(point, 'vd0')[0]
        with self.put_back(key) as body:
            manifest = json.loads(body)
            entry = manifest['chunks'][0]
            entry[3] = f'{int(entry[3], 16) ^ 1:08x}'
            self.put_manifest(key, manifest)
            self.only_deep_finds(chunk, point, 'vd0', 'CRC-32')

    def test_block_sums_wrong(self) -> None:
        """A chunk is intact but its block sums in the manifest are not:
        a deep verify names it; a read of part of it fails as damaged, so
        a restore, whose first read is the image's header, leaves no
        target"""
        point = self.chain.points[2]
        key = self.chain.image(point, 'vd1')
        chunk = self.chain.chunks(point, 'vd1')[0]
        with self.put_back(key) as body:
            manifest = json.loads(body)
            self.assertEqual(manifest['version'], 4)
            entry = manifest['chunks'][0]
            self.assertEqual(len(entry[5]), 8 * (manifest['chunk-size'] //
                                                 entry[4]), entry)
            entry[5] = f'{int(entry[5][:8], 16) ^ 1:08x}' + entry[5][8:]
            self.put_manifest(key, manifest)
            self.only_deep_finds(chunk, point, 'vd1', 'block sums')

    def put_manifest(self, key: str, manifest: dict) -> None:
        self.chain.bucket.client.put_object(
            Bucket=self.chain.bucket.name, Key=key,
            Body=json.dumps(manifest).encode(),
            ContentType='application/vnd.s3chain.manifest+json')

    def test_version_3_image(self) -> None:
        """An image as a version 3 writer stored it, its block sums in
        its chunks' metadata: it restores exactly and verifies; sums
        wrong there are found as before"""
        if self.chain.bucket.env.get('S3CHAIN_S3_KIND') == 'swift':
            self.skipTest("Swift refuses the metadata a version 3 writer "
                          "stored: no such image can be there")
        point = self.chain.points[3]
        key = self.chain.image(point, 'vd0')
        bucket = self.chain.bucket
        with contextlib.ExitStack() as stack:
            manifest = json.loads(stack.enter_context(self.put_back(key)))
            manifest['version'] = 3
            chunks = {}
            for entry in manifest['chunks']:
                chunk = next(c for c in self.chain.chunks(point, 'vd0')
                             if c.endswith(f'/{entry[0]:016x}.{entry[1]}'))
                chunks[chunk] = entry.pop(5)
                chunk_body = stack.enter_context(self.put_back(chunk))
                bucket.client.put_object(
                    Bucket=bucket.name, Key=chunk, Body=chunk_body,
                    Metadata={'s3chain-block-crc32': chunks[chunk]})
            self.put_manifest(key, manifest)

            for mode in ((), ('--deep',)):
                self.assertTrue(self.verify(*mode)['intact'], mode)
            target = os.path.join(self.dir, 'vd0.raw')
            self.ok('restore', '--backup', point, '--target',
                    f'vd0={target}')
            with open(target, 'rb') as f:
                self.assertBytes(f.read(), self.chain.expected[point]['vd0'],
                                 'vd0 of a version 3 image')
            os.remove(target)

            chunk, sums = next(iter(chunks.items()))
            body = bucket.get(chunk)
            bucket.client.put_object(
                Bucket=bucket.name, Key=chunk, Body=body,
                Metadata={'s3chain-block-crc32':
                          f'{int(sums[:8], 16) ^ 1:08x}' + sums[8:]})
            self.only_deep_finds(chunk, point, 'vd0', 'metadata')


class TestServe(RestoreTestCase):
    # test_files_from_a_mounted_backup backs another VM up into the bucket
    own_chain: Dict[str, bool] = {}

    def write_through_serve(self, point: str, disk: str, overlay: str,
                            pattern: int, offset: int, length: int) -> bytes:
        """Serves @disk at @point writable on @overlay, where a VM writes
        @pattern over @length bytes at @offset and reads them back; returns
        the disk as written"""
        run = self.serve('--backup', point, '--disk', disk, '--writable',
                         '--overlay', overlay)
        sock = os.path.join(self.dir, 'serve.sock')
        m = self.start_vm(disk, f'driver=nbd,node-name=d0,server.type=unix,'
                                f'server.path={sock},export={disk}')
        out = m.cmd('human-monitor-command', command_line=(
            f'qemu-io -d {disk} "write -P {pattern} {offset} {length}"'))
        self.assertNotIn('rror', out)
        expected = bytearray(self.chain.expected[point][disk])
        expected[offset:offset + length] = bytes([pattern]) * length
        self.assertBytes(self.vm_reads(m), bytes(expected),
                         f'the served {disk} after the write')
        self.stop(run)
        return bytes(expected)

    def test_a_vm_reads_the_served_point(self) -> None:
        self.assertServed(self.chain.points[3], 'vd0')

    def test_files_from_a_mounted_backup(self) -> None:
        """File-level restore as docs/restore.rst has it without the nbd
        kernel module: the served backup of a disk with an ext4 file
        system, shown as a file by qemu-storage-daemon's FUSE export and
        loop-mounted, gives back the files the disk held"""
        if not os.path.exists('/dev/fuse') or not shutil.which('mkfs.ext4'):
            self.skipTest('needs /dev/fuse and mkfs.ext4')
        src = os.path.join(self.dir, 'files')
        os.makedirs(os.path.join(src, 'etc'))
        files = {'etc/hostname': b'vm-with-files\n',
                 'data.bin': os.urandom(3 * MiB + 123)}
        for name, body in files.items():
            with open(os.path.join(src, name), 'wb') as f:
                f.write(body)
        raw, disk = (os.path.join(self.dir, n) for n in ('fs.raw', 'fs.qcow2'))
        subprocess.run(['mkfs.ext4', '-q', '-d', src, '-F', raw, '64M'],
                       check=True, capture_output=True)
        subprocess.run([QEMU_IMG, 'convert', '-f', 'raw', '-O', 'qcow2', raw,
                        disk], check=True)
        qmp = os.path.join(self.dir, 'fsvm.qmp')
        vm = self.start_vm('vd0', f'driver=qcow2,node-name=d0,file.driver='
                                  f'file,file.filename={disk}', qmp=qmp)
        backup = self.s3chain('backup', '--vm', 'fsvm', '--qmp', qmp,
                              '--runtime-dir', os.path.join(self.dir, 'run'))
        code, err = backup.finish()
        self.assertEqual(code, 0, err)
        vm.shutdown()
        self.machines.remove(vm)

        run = self.serve('--vm', 'fsvm', '--disk', 'vd0')
        sock = os.path.join(self.dir, 'serve.sock')
        view, mnt = (os.path.join(self.dir, n) for n in ('vd0.raw', 'mnt'))
        open(view, 'wb').close()
        os.mkdir(mnt)
        qsd = subprocess.Popen([
            QSD, '--blockdev', f'driver=nbd,node-name=vd0,server.type=unix,'
                               f'server.path={sock},export=vd0,read-only=on',
            '--export', f'type=fuse,id=file,node-name=vd0,'
                        f'mountpoint={view}'])
        try:
            for _ in range(100):
                if os.stat(view).st_size == 64 * MiB:
                    break
                time.sleep(0.1)
            self.assertEqual(os.stat(view).st_size, 64 * MiB)
            subprocess.run(['mount', '-o', 'loop,ro', view, mnt], check=True)
            try:
                for name, body in files.items():
                    with open(os.path.join(mnt, name), 'rb') as f:
                        self.assertEqual(f.read(), body, name)
            finally:
                subprocess.run(['umount', mnt], check=True)
                # the loop device lets go of the file after umount returns;
                # a FUSE export that ends before it did waits for ever
                for _ in range(100):
                    if not subprocess.run(['losetup', '-j', view],
                                          capture_output=True,
                                          text=True).stdout.strip():
                        break
                    time.sleep(0.1)
        finally:
            qsd.terminate()
            try:
                qsd.wait(timeout=30)
            except subprocess.TimeoutExpired:
                subprocess.run(['umount', '-l', view], check=False)
                qsd.wait(timeout=30)
        self.stop(run)

    def test_writable_overlay_in_bucket(self) -> None:
        """--overlay s3://BUCKET/KEY: the guest's writes go to a new image
        in the bucket, outside the repository; it stays after serving and
        opens on its own over the backup, which never changes"""
        point = self.chain.points[2]
        bucket = self.chain.bucket
        scratch = f'{bucket.prefix}-scratch/'
        key = f'{scratch}vd0.qcow2'
        overlay = f's3://{bucket.name}/{key}'
        self.addCleanup(lambda: [
            bucket.delete(o['Key']) for o in bucket.client.list_objects_v2(
                Bucket=bucket.name, Prefix=scratch).get('Contents', [])])
        before = bucket.objects()
        sock = os.path.join(self.dir, 'serve.sock')

        def refused(where: str, code: int, word: str) -> None:
            run = self.s3chain('serve', '--listen', f'unix:{sock}',
                               '--runtime-dir', os.path.join(self.dir, 'run'),
                               '--backup', point, '--disk', 'vd0',
                               '--writable', '--overlay', where)
            got, err = run.finish()
            self.assertEqual(got, code, err)
            self.assertEqual(len(err.strip().splitlines()), 1, err)
            self.assertIn(word, err)

        refused(f's3://{bucket.name}/{bucket.prefix}/vd0.qcow2', 2,
                'inside the repository')
        refused(f's3://{bucket.name}', 2, 's3://BUCKET/KEY')

        expected = self.write_through_serve(point, 'vd0', overlay, 0x6b,
                                            5 * MiB, MiB)
        self.assertEqual(bucket.objects(), before)

        host = bucket.endpoint.split('://', 1)[1]
        raw = os.path.join(self.dir, 'overlay.raw')
        subprocess.run([QEMU_IMG, 'convert', *self.secret_object(), '-O',
                        'raw', f's3chain://{host};tls=off;access-key-id='
                        f'{bucket.env["AWS_ACCESS_KEY_ID"]};'
                        f'key-secret=s3chain-key/{bucket.name}/{key}', raw],
                       check=True)
        with open(raw, 'rb') as f:
            self.assertBytes(f.read(), expected,
                             'the overlay opened on its own')
        refused(overlay, 10, 'exists')

    def test_served_over_tcp(self) -> None:
        """--listen tcp:HOST:PORT: the ready line's nbd:// URI is where a
        VM reads the point"""
        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            port = s.getsockname()[1]
        point = self.chain.points[1]
        run = self.s3chain('serve', '--listen', f'tcp:127.0.0.1:{port}',
                           '--runtime-dir', os.path.join(self.dir, 'run'),
                           '--backup', point, '--disk', 'vd1')
        ready = run.wait_event('ready')
        self.assertEqual(ready['uri'], f'nbd://127.0.0.1:{port}/vd1')
        m = self.start_vm('vd1', f'driver=nbd,node-name=d0,server.type=inet,'
                                 f'server.host=127.0.0.1,server.port={port},'
                                 f'export=vd1,read-only=on')
        self.assertBytes(self.vm_reads(m), self.chain.expected[point]['vd1'],
                         'vd1 served over TCP')
        self.stop(run)

    def test_writable_leaves_the_backup_unchanged(self) -> None:
        point = self.chain.points[4]
        before = self.chain.bucket.objects()
        overlay = os.path.join(self.dir, 'overlay.qcow2')
        self.write_through_serve(point, 'vd1', overlay, 0x5a, MiB, 2 * MiB)

        self.assertTrue(os.path.exists(overlay))
        self.assertEqual(self.chain.bucket.objects(), before)
        path = os.path.join(self.dir, 'vd1.raw')
        self.ok('restore', '--backup', point, '--target', f'vd1={path}')
        with open(path, 'rb') as f:
            self.assertBytes(f.read(), self.chain.expected[point]['vd1'],
                             'vd1 after serving it writable')


class TestEncryptedRepository(RestoreTestCase):
    """Every way of reading a point of an encrypted, compressed chain,
    with its key"""

    own_chain = {'encrypted': True}

    def test_every_point_restored_and_verified(self) -> None:
        for point in self.chain.points:
            manifest = json.loads(self.chain.bucket.get(
                self.chain.image(point, 'vd0')))
            self.assertEqual((manifest['version'], manifest['compress']),
                             (7, 'zstd'))
            targets = []
            for disk in DISKS:
                targets += ['--target',
                            f'{disk}={os.path.join(self.dir, disk)}.raw']
            self.ok('restore', '--backup', point, *targets)
            for disk in DISKS:
                path = os.path.join(self.dir, f'{disk}.raw')
                with open(path, 'rb') as f:
                    self.assertBytes(f.read(), self.chain.expected[point][disk],
                                     f'{disk} at {point}')
                os.remove(path)
        for mode in ((), ('--deep',)):
            result = self.ok('verify', '--vm', 'vm1', *mode).result()
            self.assertTrue(result['intact'], result)

    def test_served_and_written_through_an_encrypted_overlay(self) -> None:
        point = self.chain.points[3]
        self.assertServed(point, 'vd0')

        # a writable overlay in the bucket is sealed with the same key
        bucket = self.chain.bucket
        key = f'{bucket.prefix}-scratch/vd1.qcow2'
        self.addCleanup(lambda: [
            bucket.delete(o['Key']) for o in bucket.client.list_objects_v2(
                Bucket=bucket.name,
                Prefix=f'{bucket.prefix}-scratch/').get('Contents', [])])
        run = self.serve('--backup', point, '--disk', 'vd1', '--writable',
                         '--overlay', f's3://{bucket.name}/{key}')
        sock = os.path.join(self.dir, 'serve.sock')
        m = self.start_vm('vd1', f'driver=nbd,node-name=d0,server.type=unix,'
                                 f'server.path={sock},export=vd1')
        out = m.cmd('human-monitor-command', command_line=(
            'qemu-io -d vd1 "write -P 0x6c 1M 64k"'))
        self.assertNotIn('rror', out)
        expected = bytearray(self.chain.expected[point]['vd1'])
        expected[MiB:MiB + 65536] = b'\x6c' * 65536
        self.assertBytes(self.vm_reads(m), bytes(expected), 'vd1 written')
        self.stop(run)
        overlay = json.loads(bucket.get(key))
        self.assertEqual(overlay['version'], 7)
        self.assertEqual(overlay['key-id'], json.loads(bucket.get(
            self.chain.image(point, 'vd1')))['key-id'])

    def test_instant_restore(self) -> None:
        point = self.chain.points[4]
        expected = self.chain.expected[point]['vd0']
        target = os.path.join(self.dir, 'vd0.qcow2')
        qmp = os.path.join(self.dir, 'vm.qmp')
        run = self.s3chain('restore', '--instant', '--backup', point,
                           '--target', f'vd0={target}', '--qmp', qmp,
                           '--runtime-dir', os.path.join(self.dir, 'run'))
        run.wait_event('ready')
        m = self.start_vm('vd0', f'driver=qcow2,node-name=d0,file.driver=file,'
                                 f'file.filename={target}', qmp=qmp)
        self.assertBytes(self.vm_reads(m), expected, 'vd0 during the copy')
        code, err = run.finish()
        self.assertEqual(code, 0, err)
        self.assertBytes(self.vm_reads(m), expected, 'vd0 once copied')

    def test_no_key_and_another_key(self) -> None:
        other = os.path.join(self.dir, 'other-key')
        fd = os.open(other, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, 'wb') as f:
            f.write(os.urandom(32))
        sock = os.path.join(self.dir, 'serve.sock')
        for key_args in ([], ['--key-file', other]):
            for argv in (['serve', '--vm', 'vm1', '--listen',
                          f'unix:{sock}', '--runtime-dir',
                          os.path.join(self.dir, 'run')],
                         ['delete', '--vm', 'vm1', '--backup',
                          self.chain.points[0]],
                         ['prune', '--vm', 'vm1', '--keep-last', '1']):
                run = Run([argv[0], '--repo', self.chain.bucket.repo,
                           '--json', *key_args, *argv[1:]], self.chain.env)
                code, err = run.finish()
                self.assertEqual(code, 12, err)
                self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertEqual(len(self.chain.bucket.catalog()['backups']),
                         len(self.chain.points))
        # list needs no key, and says which one the backups need
        run = Run(['list', '--repo', self.chain.bucket.repo, '--json',
                   '--vm', 'vm1'], self.chain.env)
        code, err = run.finish()
        self.assertEqual(code, 0, err)
        vm = run.result()['vms'][0]
        self.assertEqual((vm['key-id'], vm['compress']),
                         (self.chain.bucket.catalog()['key-id'], 'zstd'))
        self.assertEqual(len(vm['backups']), len(self.chain.points))


class TestInstantRestore(RestoreTestCase):
    def test_vm_runs_at_once_then_without_the_bucket(self) -> None:
        point = self.chain.points[5]
        expected = self.chain.expected[point]['vd1']
        target = os.path.join(self.dir, 'vd1.qcow2')
        qmp = os.path.join(self.dir, 'vm.qmp')
        run = self.s3chain('restore', '--instant', '--backup', point,
                           '--target', f'vd1={target}', '--qmp', qmp,
                           '--copy-speed', '4M', '--runtime-dir',
                           os.path.join(self.dir, 'run'))
        run.wait_event('ready')
        m = self.start_vm('vd1', f'driver=qcow2,node-name=d0,file.driver=file,'
                                 f'file.filename={target}', qmp=qmp)
        # the VM reads the backup through its target at once
        self.assertBytes(self.vm_reads(m), expected, 'vd1 during the copy')
        self.assertIsNone(run.proc.poll(), 'the copy ended too soon to tell')
        code, err = run.finish()
        self.assertEqual(code, 0, err)
        self.assertEqual(run.result()['event'], 'result')

        info = json.loads(subprocess.run(
            [QEMU_IMG, 'info', '-U', '--output=json', target], check=True,
            capture_output=True).stdout)
        self.assertNotIn('backing-filename', info)
        self.chain.bucket.radosgw('stop')
        try:
            self.assertBytes(self.vm_reads(m), expected,
                             'vd1 with the bucket gone')
        finally:
            self.chain.bucket.radosgw('start')


class TestBadInput(RestoreTestCase):
    def refused(self, command: str, args, code: int, words=(), env=None,
                repo=None) -> None:
        before = self.chain.bucket.objects()
        run = self.s3chain(command, *args, env=env, repo=repo)
        got, err = run.finish()
        self.assertEqual(got, code, err)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        for word in words:
            self.assertIn(word, err)
        self.assertEqual(run.events[-1]['exit-code'], code)
        self.assertEqual(self.chain.bucket.objects(), before)
        self.assertEqual(os.listdir(self.dir), [])

    def target(self, disk: str = 'vd0') -> str:
        return f'--target={disk}={os.path.join(self.dir, disk + ".raw")}'

    def test_unknown_vm(self) -> None:
        run = Run(['restore', '--vm', 'nosuchvm', '--repo',
                   self.chain.bucket.repo, '--json', self.target()],
                  self.chain.env)
        code, err = run.finish()
        self.assertEqual(code, 4, err)
        self.assertIn('nosuchvm', err)
        self.assertEqual(os.listdir(self.dir), [])

    def test_temporary_directory_unwritable(self) -> None:
        self.refused('restore', [self.target(), self.target('vd1')], 2,
                     ['read plans', 'set TMPDIR to a writable directory'],
                     env=dict(self.chain.env, TMPDIR='/nonexistent'))

    def test_unknown_backup(self) -> None:
        self.refused('restore', ['--backup', '20200101T000000Z-0000',
                                 self.target()], 4,
                     words=('20200101T000000Z-0000',))

    def test_version(self) -> None:
        res = subprocess.run([S3CHAIN, '--version'], capture_output=True,
                             text=True, check=True)
        self.assertRegex(res.stdout, r'^s3chain \d+\.\d+\.\d+\n$')

    def test_target_without_a_path(self) -> None:
        self.refused('restore', ['--target=vd0='], 2,
                     words=('vd0=', 'DISK=PATH'))

    def test_unknown_disk(self) -> None:
        self.refused('restore', [self.target('vdx')], 4,
                     words=('vdx', 'vd0, vd1'))

    def test_target_exists(self) -> None:
        path = os.path.join(self.dir, 'vd0.raw')
        with open(path, 'wb') as f:
            f.write(b'precious')
        run = self.s3chain('restore', self.target())
        code, err = run.finish()
        self.assertEqual(code, 10, err)
        self.assertIn('--force', err)
        with open(path, 'rb') as f:
            self.assertEqual(f.read(), b'precious')

    def test_target_too_small(self) -> None:
        dev = loop_device(os.path.join(self.dir, 'small.img'), 32 * MiB)
        if not dev:
            self.skipTest('no loop device here')
        try:
            with open(dev, 'wb') as f:
                f.write(b'\x77' * 32 * MiB)
            run = self.s3chain('restore', f'--target=vd0={dev}')
            code, err = run.finish()
            self.assertEqual(code, 10, err)
            self.assertIn('larger', err)
            with open(dev, 'rb') as f:
                self.assertEqual(hashlib.sha256(f.read()).hexdigest(),
                                 hashlib.sha256(b'\x77' * 32 * MiB)
                                 .hexdigest())
        finally:
            subprocess.run(['losetup', '-d', dev], check=True)

    def test_missing_bucket(self) -> None:
        self.refused('restore', [self.target()], 6,
                     repo='s3://no-such-bucket-s3chain/x',
                     words=('no-such-bucket-s3chain',))

    def test_wrong_credentials(self) -> None:
        env = dict(self.chain.env, AWS_SECRET_ACCESS_KEY='not-the-secret')
        self.refused('restore', [self.target()], 5, env=env,
                     words=('access denied',))
        self.refused('list', [], 5, env=env, words=('access denied',))
        self.refused('verify', [], 5, env=env, words=('access denied',))

    def test_option_of_another_command(self) -> None:
        self.refused('restore', ['--full', self.target()], 2,
                     words=('--full',))
