# `s3chain backup` against the real radosgw, a real qemu-system VM, our
# sidecar and the real binary: chains, faults, fallbacks and bad input.
#
# Copyright (c) 2026 The s3chain authors
#
# SPDX-License-Identifier: GPL-2.0-or-later

import base64
import glob
import json
import os
import signal
import socket
import subprocess
import threading
import time
import unittest
from typing import List, Tuple

from harness import (MiB, BackupTestCase, BucketFaults, GuestWriter, QSD,
                     SIDECAR, Run)

CBW_TIMEOUT = 3
# a write may wait for the sidecar up to cbw-timeout, plus the time HMP
# itself takes on a loaded 2-core machine
WRITE_BOUND = CBW_TIMEOUT + 2.0


class TestChain(BackupTestCase):
    def test_two_disks_through_a_chain(self) -> None:
        full = self.backup()
        self.assertEqual({k: v[0] for k, v in self.disk_types(full).items()},
                         {'vd0': 'full', 'vd1': 'full'})
        at_full = {d: self.vm.disk_digest(d) for d in ('vd0', 'vd1')}

        self.vm.write('vd0', '-P 0xa1 3M 1M')
        self.vm.write('vd0', '-P 0xa2 100M 64k')
        self.vm.write('vd1', '-z 8M 2M')
        self.vm.write('vd1', '-P 0xa3 63M 512')
        inc1 = self.backup()
        self.assertEqual(self.disk_types(inc1)['vd0'][0], 'incremental')
        self.assertEqual(inc1['disks'][0]['parent'], full['backup'])
        # an incremental stores what changed, not the disk
        self.assertGreater(full['disks'][0]['bytes-stored'], 64 * 1024 * 1024)
        self.assertLess(inc1['disks'][0]['bytes-stored'], 16 * 1024 * 1024)
        at_inc1 = {d: self.vm.disk_digest(d) for d in ('vd0', 'vd1')}

        # Writes made once the backup has started belong to the next one
        self.vm.write('vd0', '-P 0xb1 40M 8M')
        self.vm.write('vd1', '-P 0xb2 0 4M')
        run = self.start('--cbw-timeout', str(CBW_TIMEOUT))
        run.wait_started()
        at_inc2 = {d: self.vm.disk_digest(d) for d in ('vd0', 'vd1')}
        during = [self.vm.write('vd0', '-P 0xc1 40M 1M'),
                  self.vm.write('vd1', '-P 0xc2 1M 1M'),
                  self.vm.write('vd0', '-P 0xc3 120M 64k')]
        code, err = run.finish()
        self.assertEqual(code, 0, err)
        inc2 = run.result()
        self.assertLess(max(during), WRITE_BOUND)
        at_after = {d: self.vm.disk_digest(d) for d in ('vd0', 'vd1')}
        self.assertNotEqual(at_after['vd0'], at_inc2['vd0'])

        inc3 = self.backup()
        for point, expected in ((full, at_full), (inc1, at_inc1),
                                (inc2, at_inc2), (inc3, at_after)):
            for disk in ('vd0', 'vd1'):
                self.assertRestores(point['backup'], disk, expected[disk])

        catalog = self.bucket.catalog()
        self.assertEqual([b['id'] for b in catalog['backups']],
                         [full['backup'], inc1['backup'], inc2['backup'],
                          inc3['backup']])
        disk = catalog['backups'][3]['disks'][0]
        self.assertEqual(disk['serial'], 'SERIAL-vd0')
        self.assertEqual(disk['parent'], inc2['backup'])
        self.assertEqual(disk['checkpoint'], 's3chain-' + inc3['backup'])
        # only the last checkpoint's bitmap is left in the VM
        self.assertEqual(self.vm.bitmaps('disk0'),
                         ['s3chain-' + inc3['backup']])

    def test_one_disk_by_name(self) -> None:
        result = self.backup('--disk', 'vd1', '--progress', 'json')
        self.assertEqual([d['name'] for d in result['disks']], ['vd1'])
        self.assertEqual(self.vm.bitmaps('disk0'), [])


class TestCompressed(BackupTestCase):
    """--compress: the VM's first backup decides, later ones follow"""

    def manifest(self, backup_id: str, disk: str) -> dict:
        return json.loads(self.bucket.get(
            f'{self.bucket.prefix}/s3chain/vms/vm1/disks/{disk}/'
            f'{backup_id}.qcow2'))

    def test_chain_compressed_and_every_point_restored(self) -> None:
        # the disks hold byte patterns (VM in harness.py), and some text
        text = b''.join(b'%08d the guest wrote this line\n' % i
                        for i in range(200000))[:4 * MiB]
        pattern = os.path.join(self.dir, 'text.bin')
        with open(pattern, 'wb') as f:
            f.write(text)
        self.vm.write('vd0', f'-s {pattern} 20M 4M')
        full = self.backup('--compress', 'zstd')
        at_full = {d: self.vm.disk_bytes(d) for d in ('vd0', 'vd1')}

        self.vm.write('vd0', '-P 0xa1 3M 1M')
        self.vm.write('vd1', '-z 8M 2M')
        inc1 = self.backup()
        self.assertEqual(self.disk_types(inc1)['vd0'][0], 'incremental')
        at_inc1 = {d: self.vm.disk_bytes(d) for d in ('vd0', 'vd1')}

        self.vm.write('vd1', f'-s {pattern} 40M 4M')
        run = self.start('--compress', 'zstd:9')
        run.wait_started()
        at_inc2 = {d: self.vm.disk_bytes(d) for d in ('vd0', 'vd1')}
        self.vm.write('vd0', '-P 0xc1 40M 1M')
        code, err = run.finish()
        self.assertEqual(code, 0, err)
        inc2 = run.result()

        for point, expected in ((full, at_full), (inc1, at_inc1),
                                (inc2, at_inc2)):
            for disk in ('vd0', 'vd1'):
                self.assertRestores(point['backup'], disk, expected[disk])
                manifest = self.manifest(point['backup'], disk)
                self.assertEqual((manifest['version'], manifest['compress']),
                                 (6, 'zstd'))
        catalog = self.bucket.catalog()
        self.assertEqual((catalog['format'], catalog['compress']), (3, 'zstd'))
        # what went up is far less than what the image's chunks hold
        pages = self.bucket.client.get_paginator('list_objects_v2').paginate(
            Bucket=self.bucket.name,
            Prefix=f"{self.bucket.prefix}/s3chain/vms/vm1/disks/vd0/"
                   f"{full['backup']}.qcow2.d/")
        stored = sum(o['Size'] for page in pages
                     for o in page.get('Contents', []))
        self.assertLess(stored, full['disks'][0]['bytes-stored'] // 4)

        run = Run(['verify', '--vm', 'vm1', '--repo', self.bucket.repo,
                   '--json', '--deep'], self.env())
        code, err = run.finish()
        self.assertEqual(code, 0, err)
        self.assertTrue(run.result()['intact'])

        # s3chain restore reads the chain with read plans: a block at a time
        for point, expected in ((inc1, at_inc1), (inc2, at_inc2)):
            target = os.path.join(self.dir, 'vd1.raw')
            run = Run(['restore', '--vm', 'vm1', '--repo', self.bucket.repo,
                       '--json', '--backup', point['backup'],
                       '--target', f'vd1={target}'], self.env())
            code, err = run.finish()
            self.assertEqual(code, 0, err)
            with open(target, 'rb') as f:
                self.assertTrue(f.read() == expected['vd1'],
                                f"restore of {point['backup']} differs")
            os.remove(target)

    def test_compress_refused_over_uncompressed_backups(self) -> None:
        self.backup()
        before = self.bucket.objects()
        err = self.run_refused(self.args('--compress', 'zstd'), 2,
                               words=('uncompressed', '--compress'))
        self.assertIn('vm1', err)
        self.assertEqual(self.bucket.objects(), before)
        # and without it, the next backup goes on uncompressed
        inc = self.backup()
        self.assertEqual(self.manifest(inc['backup'], 'vd0')['version'], 4)

    def test_bad_compress_values(self) -> None:
        for value, word in (('gzip', "'gzip'"), ('zstd:0', "'0'"),
                            ('zstd:20', "'20'"), ('zstd:', "''")):
            self.run_refused(self.args('--compress', value), 2,
                             words=('--compress', word))
        self.assertIsNone(self.bucket.catalog())


class TestEncrypted(BackupTestCase):
    """--encrypt --key-file: the VM's first backup decides, every command
    needs the key after it, and the key is nowhere but in its file"""

    def setUp(self) -> None:
        super().setUp()
        self.key = os.urandom(32)
        self.key_file = self.private_file('key', self.key.hex().encode())
        self.other_key_file = self.private_file('other-key', os.urandom(32))

    def private_file(self, name: str, data: bytes, mode: int = 0o600) -> str:
        path = os.path.join(self.dir, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
        os.chmod(path, mode)
        return path

    def manifest(self, backup_id: str, disk: str) -> dict:
        return json.loads(self.bucket.get(
            f'{self.bucket.prefix}/s3chain/vms/vm1/disks/{disk}/'
            f'{backup_id}.qcow2'))

    def command(self, *argv: str, key_file: str = '') -> Run:
        key = ['--key-file', key_file or self.key_file]
        return Run([*argv, '--vm', 'vm1', '--repo', self.bucket.repo,
                    '--json', *key], self.env())

    def key_forms(self) -> List[bytes]:
        return [self.key, self.key.hex().encode(),
                self.key.hex().upper().encode(), base64.b64encode(self.key)]

    def assertKeyNowhere(self, *texts: bytes) -> None:
        """Not in @texts, nor in any object of the bucket or its metadata"""
        for form in self.key_forms():
            for text in texts:
                self.assertNotIn(form, text)
            for key in self.bucket.objects():
                self.assertNotIn(form, self.bucket.get(key), key)
                head = self.bucket.client.head_object(Bucket=self.bucket.name,
                                                      Key=key)
                self.assertNotIn(form.decode('latin-1'),
                                 json.dumps(head['Metadata']), key)

    def process_texts(self) -> bytes:
        """The command lines and environments of this user's processes"""
        texts = []
        for pid in os.listdir('/proc'):
            if not pid.isdigit():
                continue
            for what in ('cmdline', 'environ'):
                try:
                    with open(f'/proc/{pid}/{what}', 'rb') as f:
                        texts.append(f.read())
                except OSError:
                    pass
        return b'\0'.join(texts)

    def test_chain_encrypted_and_every_point_restored(self) -> None:
        full = self.backup('--encrypt', '--key-file', self.key_file)
        at_full = {d: self.vm.disk_bytes(d) for d in ('vd0', 'vd1')}

        self.vm.write('vd0', '-P 0xa1 3M 1M')
        self.vm.write('vd1', '-z 8M 2M')
        inc1 = self.backup('--key-file', self.key_file)
        self.assertEqual(self.disk_types(inc1)['vd0'][0], 'incremental')
        at_inc1 = {d: self.vm.disk_bytes(d) for d in ('vd0', 'vd1')}

        # the guest writes while the backup runs; the sidecar and qemu-img
        # have the key, and no command line or environment holds it
        self.vm.write('vd1', '-P 0xb1 40M 4M')
        run = self.start('--key-file', self.key_file)
        run.wait_started()
        at_inc2 = {d: self.vm.disk_bytes(d) for d in ('vd0', 'vd1')}
        self.vm.write('vd0', '-P 0xc1 40M 1M')
        processes = self.process_texts()
        code, err = run.finish()
        self.assertEqual(code, 0, err)
        inc2 = run.result()

        for point, expected in ((full, at_full), (inc1, at_inc1),
                                (inc2, at_inc2)):
            for disk in ('vd0', 'vd1'):
                self.assertRestores(point['backup'], disk, expected[disk],
                                    encryption_key=self.key)
                manifest = self.manifest(point['backup'], disk)
                self.assertEqual((manifest['version'], manifest['encrypt']),
                                 (7, 'aes-256-gcm'))
                self.assertNotIn('compress', manifest)
        catalog = self.bucket.catalog()
        self.assertEqual(catalog['format'], 4)
        self.assertEqual(catalog['key-id'], manifest['key-id'])

        run = self.command('verify', '--deep')
        code, err = run.finish()
        self.assertEqual(code, 0, err)
        self.assertTrue(run.result()['intact'])
        outputs = err.encode()

        # s3chain restore reads the chain with read plans, sealed blocks
        for point, expected in ((inc1, at_inc1), (inc2, at_inc2)):
            target = os.path.join(self.dir, 'vd1.raw')
            run = self.command('restore', '--backup', point['backup'],
                               '--target', f'vd1={target}')
            code, err = run.finish()
            self.assertEqual(code, 0, err)
            outputs += err.encode()
            with open(target, 'rb') as f:
                self.assertTrue(f.read() == expected['vd1'],
                                f"restore of {point['backup']} differs")
            os.remove(target)
        self.assertKeyNowhere(processes, outputs)

    def test_encrypted_and_compressed(self) -> None:
        text = b''.join(b'%08d the guest wrote this line\n' % i
                        for i in range(200000))[:4 * MiB]
        pattern = os.path.join(self.dir, 'text.bin')
        with open(pattern, 'wb') as f:
            f.write(text)
        self.vm.write('vd0', f'-s {pattern} 20M 4M')
        full = self.backup('--encrypt', '--key-file', self.key_file,
                           '--compress', 'zstd')
        at_full = self.vm.disk_bytes('vd0')
        self.vm.write('vd0', '-P 0xd1 21M 1M')
        inc = self.backup('--key-file', self.key_file)
        for point, expected in ((full, at_full),
                                (inc, self.vm.disk_bytes('vd0'))):
            self.assertRestores(point['backup'], 'vd0', expected,
                                encryption_key=self.key)
            manifest = self.manifest(point['backup'], 'vd0')
            self.assertEqual((manifest['version'], manifest['compress']),
                             (7, 'zstd'))
        run = self.command('verify', '--deep')
        code, err = run.finish()
        self.assertEqual(code, 0, err)
        self.assertTrue(run.result()['intact'])

    def test_key_refusals(self) -> None:
        """Each bad key is one line, its own exit code, nothing written"""
        # before any backup: the key file itself
        for data, mode, code, words in (
                (os.urandom(32), 0o644, 2, ('chmod 600',)),
                (os.urandom(16), 0o600, 2, ('16 bytes', '32 bytes')),
                (b'ab' * 31 + b'\n', 0o600, 2, ('63 bytes',)),
                (b'zz' * 32, 0o600, 2, ('64 bytes',))):
            path = self.private_file('bad-key', data, mode)
            self.run_refused(self.args('--encrypt', '--key-file', path), code,
                             words=('key file', *words))
        self.run_refused(self.args('--encrypt'), 2,
                         words=('--encrypt', '--key-file'))
        self.run_refused(self.args('--key-file', '/nonexistent/key'), 2,
                         words=('/nonexistent/key',))
        self.assertIsNone(self.bucket.catalog())

        full = self.backup('--encrypt', '--key-file', self.key_file)
        key_id = self.bucket.catalog()['key-id']
        before = self.bucket.objects()
        target = os.path.join(self.dir, 'never.raw')
        # no key, then another key: backup, restore, verify
        for key_args in ((), ('--key-file', self.other_key_file)):
            words = ('key id', key_id) if key_args else ('--key-file', key_id)
            self.run_refused(self.args(*key_args), 12, words=words)
            for argv in (['restore', '--backup', full['backup'],
                          '--target', f'vd0={target}'], ['verify']):
                self.run_refused([*argv, '--vm', 'vm1', '--repo',
                                  self.bucket.repo, '--json', *key_args], 12,
                                 words=words)
        self.assertFalse(os.path.exists(target))
        self.assertEqual(self.bucket.objects(), before)

    def test_plain_backups_refuse_a_key(self) -> None:
        self.backup()
        before = self.bucket.objects()
        self.run_refused(self.args('--encrypt', '--key-file', self.key_file),
                         2, words=('unencrypted', '--encrypt'))
        self.run_refused(self.args('--key-file', self.key_file), 12,
                         words=('not encrypted', '--key-file'))
        self.assertEqual(self.bucket.objects(), before)

    def test_tampering_found(self) -> None:
        """A chunk altered and a manifest edited: verify names each object,
        and restore refuses before writing"""
        full = self.backup('--encrypt', '--key-file', self.key_file)
        prefix = f'{self.bucket.prefix}/s3chain/vms/vm1/disks/vd0/'
        image = f'{prefix}{full["backup"]}.qcow2'
        chunks = sorted(k for k in self.bucket.objects()
                        if k.startswith(image + '.d/'))
        chunk = self.bucket.client.get_object(
            Bucket=self.bucket.name, Key=chunks[1])['Body'].read()
        altered = bytearray(chunk)
        altered[100] ^= 1
        manifest = self.bucket.client.get_object(
            Bucket=self.bucket.name, Key=image)
        text = manifest['Body'].read()
        for key, body, extra in (
                (chunks[1], bytes(altered), {}),
                (image, text.replace(b'"generation": ', b'"generation": 9'),
                 {'ContentType': manifest['ContentType']})):
            self.bucket.client.put_object(Bucket=self.bucket.name, Key=key,
                                          Body=body, **extra)
            run = self.command('verify', '--deep')
            code, err = run.finish()
            self.assertEqual(code, 11, err)
            faults = run.result()['faults']
            self.assertEqual(faults[0]['object'],
                             f's3://{self.bucket.name}/{key}', faults)
            target = os.path.join(self.dir, 'never.raw')
            run = self.command('restore', '--target', f'vd0={target}')
            code, err = run.finish()
            self.assertEqual(code, 11, err)
            self.assertIn(key, err)
            self.assertFalse(os.path.exists(target))
            self.bucket.client.put_object(
                Bucket=self.bucket.name, Key=key,
                Body=chunk if key == chunks[1] else text, **extra)

        # two chunk objects swapped: each is named
        first = self.bucket.get(chunks[0])
        self.bucket.put(chunks[0], chunk)
        self.bucket.put(chunks[1], first)
        run = self.command('verify', '--deep')
        code, err = run.finish()
        self.assertEqual(code, 11, err)
        named = {f['object'] for f in run.result()['faults']}
        self.assertEqual(named, {f's3://{self.bucket.name}/{k}'
                                 for k in chunks[:2]})


class TestFallbacks(BackupTestCase):
    def test_bitmap_removed_by_hand(self) -> None:
        full = self.backup()
        self.vm.cmd('block-dirty-bitmap-remove', node='disk0',
                            name='s3chain-' + full['backup'])
        self.vm.write('vd0', '-P 0x5a 7M 1M')
        result = self.backup()
        types = self.disk_types(result)
        self.assertEqual(types['vd0'][0], 'full')
        self.assertIn('missing', types['vd0'][1])
        self.assertEqual(types['vd1'][0], 'incremental')
        self.assertRestores(result['backup'], 'vd0',
                            self.vm.disk_bytes('vd0'))

    def test_chain_limit(self) -> None:
        self.backup('--chain-limit', '2')
        inc = self.backup('--chain-limit', '2')
        self.assertEqual(self.disk_types(inc)['vd0'][0], 'incremental')
        again = self.backup('--chain-limit', '2')
        types = self.disk_types(again)
        self.assertEqual(types['vd0'][0], 'full')
        self.assertIn('limit', types['vd0'][1])
        self.assertIsNone(again['disks'][0]['parent'])

    def test_full_flag(self) -> None:
        self.backup()
        result = self.backup('--full')
        self.assertEqual(self.disk_types(result)['vd0'],
                         ('full', '--full was given'))
        # and the chain goes on from it
        self.vm.write('vd1', '-P 0x77 9M 1M')
        inc = self.backup()
        self.assertEqual(inc['disks'][1]['parent'], result['backup'])
        self.assertRestores(inc['backup'], 'vd1', self.vm.disk_bytes('vd1'))


class TestFilters(BackupTestCase):
    def test_disk_under_a_throttle_filter(self) -> None:
        """Checkpoints live on the format node under the device's filters,
        persistent, and the device keeps its filter"""
        self.vm.cmd('object-add', qom_type='throttle-group', id='tg0',
                    limits={'iops-total': 100000})
        self.vm.cmd('blockdev-add', driver='throttle', node_name='thr1',
                    throttle_group='tg0', file='disk1')
        self.vm.cmd('qom-set', path='/machine/peripheral/vd1',
                    property='drive', value='thr1')
        graph, devices = self.vm.graph(), self.vm.devices()
        self.backup()
        self.vm.write('vd1', '-P 0x61 2M 1M')
        inc = self.backup()
        self.assertEqual(self.disk_types(inc)['vd1'][0], 'incremental')
        self.assertEqual(self.vm.graph(), graph)
        self.assertEqual(self.vm.devices(), devices)
        self.assertEqual(self.vm.bitmaps('thr1'), [])
        self.assertEqual(self.vm.bitmaps('disk1'),
                         ['s3chain-' + inc['backup']])
        self.assertRestores(inc['backup'], 'vd1', self.vm.disk_bytes('vd1'))


class TestGuestFirst(BackupTestCase):
    def test_bucket_stalls_past_the_cbw_timeout(self) -> None:
        """radosgw frozen for longer than --cbw-timeout while the guest
        rewrites blocks the backup has not copied: their old data goes to
        the sidecar's RAM, so the writes don't wait for the bucket, and
        the backup, once the bucket is back, holds the disks as they were
        at its instant"""
        run = self.start('--cbw-timeout', str(CBW_TIMEOUT),
                         '--buffer-size', '8M')
        run.wait_started()
        self.bucket.radosgw('pause')
        try:
            at_start = {d: self.vm.disk_digest(d) for d in ('vd0', 'vd1')}
            # the top of each disk, which the jobs copy last
            latencies = [self.vm.write(disk, f'-P {0x40 + i} '
                                       f'{size - (i + 1) * 256 * 1024} 64k')
                         for i in range(16)
                         for disk, size in (('vd0', 128 * MiB),
                                            ('vd1', 64 * MiB))]
            time.sleep(CBW_TIMEOUT + 1)
        finally:
            self.bucket.radosgw('resume')
        code, err = run.finish()
        self.assertEqual(code, 0, err)
        self.assertLess(max(latencies), WRITE_BOUND)
        result = run.result()
        self.assertEqual(self.disk_types(result)['vd0'][0], 'full')
        for disk in ('vd0', 'vd1'):
            self.assertRestores(result['backup'], disk, at_start[disk])
        # the scratch held only what the job had not copied, and is gone
        self.assertEqual([k for k in self.bucket.objects()
                          if k.endswith('.scratch')
                          or '.scratch.d/' in k], [])


class TestFaults(BucketFaults, BackupTestCase):
    """Each fault strikes mid-backup while the guest keeps writing"""

    def fault(self, strike, *extra: str, env=None, words=None) -> int:
        """A backup that strike(run) hits; its stderr goes into @words"""
        first = self.backup()
        catalog = self.bucket.catalog()
        graph = self.vm.graph()
        devices = self.vm.devices()
        # changes the failed backup would have held: enough of them that
        # the fault strikes while it runs
        self.vm.write('vd0', '-P 0x99 0 120M')
        self.vm.write('vd1', '-P 0x98 0 60M')

        writer = GuestWriter(self.vm)
        run = self.start('--cbw-timeout', str(CBW_TIMEOUT),
                         '--buffer-size', '4M', *extra, env=env)
        run.wait_started()
        writer.start()
        strike(run)
        code, err = run.finish()
        if words is not None:
            words.append(err)
        time.sleep(1)
        writer.finish()

        self.assertIsNone(writer.error)
        self.assertGreater(len(writer.latencies), 0)
        self.assertLess(max(writer.latencies), WRITE_BOUND,
                        'a guest write stalled past the bound')
        self.assertNotEqual(code, 0)
        self.assertIn(run.events[-1]['event'], ('error',), run.events[-1])
        self.assertEqual(self.bucket.catalog(), catalog)
        self.assertTrue(self.vm.running())
        self.assertEqual(self.vm.graph(), graph)
        self.assertEqual(self.vm.devices(), devices)
        self.assertEqual(self.vm.bitmaps('disk0'),
                         ['s3chain-' + first['backup']])

        # everything since the first backup is in the next one
        after = self.backup()
        self.assertEqual(self.disk_types(after)['vd0'][0], 'incremental')
        self.assertEqual(after['disks'][0]['parent'], first['backup'])
        for disk in ('vd0', 'vd1'):
            self.assertRestores(after['backup'], disk,
                                self.vm.disk_bytes(disk))
        return code

    def test_job_cancelled(self) -> None:
        def strike(_run) -> None:
            # the jobs complete as a group: cancelling one ends them all
            job = self.vm.cmd('query-jobs')[0]
            self.vm.cmd('job-cancel', id=job['id'])
        self.assertEqual(self.fault(strike), 8)

    def test_sigterm(self) -> None:
        def strike(run) -> None:
            run.proc.send_signal(signal.SIGTERM)
        self.assertEqual(self.fault(strike), 9)

    def test_bucket_stalls(self) -> None:
        """radosgw frozen past --cbw-timeout: guest writes go on, the
        snapshot is dropped, and the message says so, not 'Permission
        denied'"""
        def strike(_run) -> None:
            self.bucket.radosgw('pause')
            try:
                time.sleep(CBW_TIMEOUT + 5)
            finally:
                self.bucket.radosgw('resume')
        words = []
        self.assertEqual(self.fault(strike, words=words), 8)
        self.assertIn('snapshot was dropped', words[0])
        self.assertIn(f'--cbw-timeout ({CBW_TIMEOUT} s)', words[0])
        self.assertNotIn('Permission denied', words[0])

    def test_vm_killed(self) -> None:
        """The VM dies mid-backup: one line, exit 8, the catalog as it
        was"""
        first = self.backup()
        catalog = self.bucket.catalog()
        self.vm.write('vd0', '-P 0x99 0 120M')
        run = self.start('--buffer-size', '4M')
        run.wait_started()
        os.kill(self.vm.machine.get_pid(), signal.SIGKILL)
        code, err = run.finish()
        self.assertEqual(code, 8, err)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertIn('the VM', err)
        self.assertEqual(self.bucket.catalog(), catalog)
        self.assertEqual(catalog['backups'][0]['id'], first['backup'])


def children_of(pid: int) -> List[int]:
    """The processes whose parent is @pid"""
    found = []
    for stat in glob.glob('/proc/[0-9]*/stat'):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(')', 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.split('/')[2]))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except OSError:
        return False


class TestKilled(BackupTestCase):
    """`kill -9` of the command at several instants of a backup; the next
    backup finds what it left, undoes it and loses no change"""

    def killed(self, instant, *extra: str) -> Tuple[str, List[dict]]:
        """A backup killed at @instant(run), then a normal one; returns
        the normal one's stderr and events"""
        first = self.backup(*extra)
        at_first = {d: self.vm.disk_digest(d) for d in ('vd0', 'vd1')}
        graph, devices = self.vm.graph(), self.vm.devices()
        self.vm.write('vd0', '-P 0x99 0 120M')
        self.vm.write('vd1', '-P 0x98 0 60M')

        run = self.start('--buffer-size', '4M', *extra)
        instant(run)
        sidecars = children_of(run.proc.pid)
        run.proc.kill()
        run.proc.communicate()
        # the sidecar the command started goes with it
        deadline = time.monotonic() + 10
        while any(alive(p) for p in sidecars) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertEqual([p for p in sidecars if alive(p)], [])

        # a change made after the kill belongs to the next backup
        self.vm.write('vd1', '-P 0x42 5M 1M')
        again = self.start(*extra)
        code, err = again.finish()
        self.assertEqual(code, 0, err)
        self.assertNotIn('CRITICAL', err)
        after = again.result()
        self.assertEqual(self.vm.graph(), graph)
        self.assertEqual(self.vm.devices(), devices)
        for node in ('disk0', 'disk1'):
            bitmaps = [(b['name'], b['persistent'], b['recording'])
                       for n in self.vm.cmd('query-named-block-nodes',
                                            flat=True)
                       if n['node-name'] == node
                       for b in n.get('dirty-bitmaps', [])]
            self.assertEqual(bitmaps, [('s3chain-' + after['backup'], True,
                                        True)])
        self.assertEqual([b['id'] for b in self.bucket.catalog()['backups']],
                         [first['backup'], after['backup']])
        self.assertEqual({d: t[0] for d, t in self.disk_types(after).items()},
                         {'vd0': 'incremental', 'vd1': 'incremental'})
        for disk in ('vd0', 'vd1'):
            self.assertRestores(first['backup'], disk, at_first[disk])
            self.assertRestores(after['backup'], disk,
                                self.vm.disk_digest(disk))
        # and the one after that follows it
        self.vm.write('vd0', '-P 0x43 9M 1M')
        last = self.backup(*extra)
        self.assertEqual(last['disks'][0]['parent'], after['backup'])
        self.assertRestores(last['backup'], 'vd0', self.vm.disk_digest('vd0'))
        return err, again.events

    def test_killed_while_building_the_graph(self) -> None:
        def instant(_run) -> None:
            # the first node the backup adds to the VM
            while not any(n.startswith('s3c') for n, _ in self.vm.graph()):
                time.sleep(0.01)
        self.killed(instant)

    def test_killed_as_the_jobs_start(self) -> None:
        err, events = self.killed(lambda run: run.wait_started())
        self.assertIn('cleaned up the VM after a killed command', err)
        self.assertIn('back on node disk0', err)
        cleaned = [e for e in events if e['event'] == 'cleaned-up']
        self.assertEqual([e['where'] for e in cleaned][:1], ['the VM'])
        self.assertIn('ended job s3c0-', ' '.join(cleaned[0]['items']))

    def test_killed_mid_copy(self) -> None:
        def instant(run) -> None:
            run.wait_started()
            time.sleep(1.5)
        self.killed(instant)

    def test_killed_with_a_sidecar_of_its_own(self) -> None:
        """A sidecar that outlives the command (KubeVirt's container):
        what the killed command left in it goes too"""
        sidecar = subprocess.Popen([SIDECAR], env=self.env(
            S3CHAIN_RUNTIME_DIR=self.runtime))
        qmp = os.path.join(self.runtime, 'qsd.qmp')
        while not os.path.exists(qmp):
            time.sleep(0.05)
        try:
            err, _ = self.killed(lambda run: run.wait_started(),
                                 '--sidecar-qmp', qmp)
            self.assertIn('cleaned up the sidecar after a killed command',
                          err)
            self.assertIsNone(sidecar.poll())
        finally:
            sidecar.kill()
            sidecar.wait()


class TestBadInput(BackupTestCase):
    def refused(self, args, code: int, env=None, words=(),
                repo=None, images_busy=False) -> str:
        def objects():
            # images that another backup is writing are its business
            return {k: v for k, v in self.bucket.objects().items()
                    if not (images_busy and '/disks/' in k)}
        before = objects()
        graph = self.vm.graph()
        argv = self.args(*args)
        if repo:
            argv[argv.index('--repo') + 1] = repo
        err = self.run_refused(argv, code, env=env, words=words)
        self.assertEqual(objects(), before)
        self.assertEqual(self.vm.graph(), graph)
        return err

    def test_wrong_credentials(self) -> None:
        env = self.env(AWS_SECRET_ACCESS_KEY='not-the-secret')
        self.refused([], 5, env=env, words=('access denied',))

    def test_missing_bucket(self) -> None:
        self.refused([], 6, repo='s3://no-such-bucket-s3chain/x',
                     words=('no-such-bucket-s3chain',))

    def test_wrong_qmp_socket(self) -> None:
        self.refused(['--qmp', '/nonexistent/vm.qmp'], 3,
                     words=('/nonexistent/vm.qmp',))

    def test_unknown_disk(self) -> None:
        self.refused(['--disk', 'nosuchdisk'], 4,
                     words=('nosuchdisk', 'vd0, vd1'))

    def test_bad_option_value(self) -> None:
        self.refused(['--chain-limit', 'lots'], 2, words=('--chain-limit',))

    def test_credentials_file_readable_by_others(self) -> None:
        path = os.path.join(self.dir, 'credentials')
        with open(path, 'w', encoding='utf-8') as f:
            f.write('[default]\naws_access_key_id = a\n'
                    'aws_secret_access_key = b\n')
        os.chmod(path, 0o644)
        env = {k: v for k, v in self.env().items()
               if k not in ('AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY')}
        self.refused(['--credentials', path], 2, env=env,
                     words=('chmod 600',))

    def test_second_concurrent_backup(self) -> None:
        first = self.start()
        first.wait_started()
        # held still mid-backup, so that the second surely meets it
        first.proc.send_signal(signal.SIGSTOP)
        try:
            self.refused([], 7, words=('locked',), images_busy=True)
        finally:
            first.proc.send_signal(signal.SIGCONT)
        code, err = first.finish()
        self.assertEqual(code, 0, err)
        self.assertEqual(len(self.bucket.catalog()['backups']), 1)

    def test_stale_lock_of_a_dead_process(self) -> None:
        dead = subprocess.Popen(['true'])
        dead.wait()
        key = f'{self.bucket.prefix}/s3chain/vms/vm1/lock'
        self.bucket.put(key, json.dumps({
            'host': os.uname().nodename, 'pid': dead.pid,
            'since': int(time.time())}).encode())
        self.backup()
        self.assertNotIn(key, self.bucket.objects())


class FakeAgent(threading.Thread):
    """A guest agent's socket that answers as qemu-ga does (guest-sync
    with its argument, and every answer with the request's id, as QEMU's
    QMP dispatcher does) and records what it was asked; with @mute it
    accepts and never answers"""

    def __init__(self, path: str, mute: bool = False) -> None:
        super().__init__(daemon=True)
        self.mute = mute
        self.calls = []
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(path)
        self.server.listen(1)

    def run(self) -> None:
        conn, _ = self.server.accept()
        f = conn.makefile('rw')
        for line in f:
            msg = json.loads(line)
            self.calls.append(msg['execute'])
            if self.mute:
                continue
            reply = {'return': msg.get('arguments', {}).get('id', 0)}
            if 'id' in msg:
                reply['id'] = msg['id']
            f.write(json.dumps(reply) + '\n')
            f.flush()


class TestGuestAgent(BackupTestCase):
    def test_freeze_and_thaw(self) -> None:
        path = os.path.join(self.dir, 'qga.sock')
        agent = FakeAgent(path)
        agent.start()
        run = self.start('--guest-agent', path)
        code, err = run.finish()
        self.assertEqual(code, 0, err)
        result = run.result()
        self.assertEqual(agent.calls, ['guest-sync', 'guest-fsfreeze-freeze',
                                       'guest-fsfreeze-thaw'])
        # frozen for the backup's instant, not merely asked to be: a
        # freeze that failed or timed out is a warning
        self.assertNotIn('warning', err)
        self.assertRestores(result['backup'], 'vd0',
                            self.vm.disk_bytes('vd0'))

    def test_agent_that_does_not_answer(self) -> None:
        path = os.path.join(self.dir, 'qga.sock')
        agent = FakeAgent(path, mute=True)
        agent.start()
        run = self.start('--guest-agent', path)
        code, err = run.finish()
        self.assertEqual(code, 0, err)
        self.assertIn('without freezing', err)
        self.assertEqual(agent.calls, ['guest-sync'])


class TestSecrets(BackupTestCase):
    def test_no_secret_anywhere(self) -> None:
        """Neither the secret access key nor the encryption key, in any
        form, is in a command line, the output, the sidecar's QMP
        traffic or log, or a file left behind"""
        key = os.urandom(32)
        key_file = os.path.join(self.dir, 'key')
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, 'wb') as f:
            f.write(key)
        secrets = [self.bucket.env['AWS_SECRET_ACCESS_KEY'], key.hex(),
                   key.hex().upper(), base64.b64encode(key).decode()]
        trace = os.path.join(self.dir, 'qsd-qmp.log')
        env = self.env(S3CHAIN_QSD_TRACE=f'enable=handle_qmp_command,'
                                         f'file={trace}')
        run = self.start('--encrypt', '--key-file', key_file, env=env)
        run.wait_started()
        cmdlines = []
        for path in glob.glob('/proc/[0-9]*/cmdline'):
            try:
                with open(path, 'rb') as f:
                    cmdlines.append(f.read().decode(errors='replace'))
            except OSError:
                pass
        code, err = run.finish()
        self.assertEqual(code, 0, err)
        self.assertTrue(any(QSD in c for c in cmdlines),
                        'the sidecar was not seen running')
        with open(trace, encoding='utf-8') as f:
            log = f.read()
        self.assertIn('blockdev-create', log)
        self.assertIn('object-add', log)
        # what the sidecar said goes to its log, not to the command's output
        with open(os.path.join(self.runtime, 'sidecar.log'),
                  encoding='utf-8') as f:
            sidecar_log = f.read()
        for where, text in (('a command line', '\n'.join(cmdlines)),
                            ('the output', run.stdout + err),
                            ("the sidecar's QMP log", log),
                            ("the sidecar's log", sidecar_log)):
            for secret in secrets:
                self.assertNotIn(secret, text, f'a secret is in {where}')
            self.assertNotIn(key, text.encode(errors='surrogateescape'),
                             f'the key is in {where}')
        # the secret files were removed as soon as the sidecar read them
        left = [f for f in os.listdir(self.runtime)
                if os.path.isfile(os.path.join(self.runtime, f))]
        self.assertEqual(left, ['sidecar.log'])


if __name__ == '__main__':
    unittest.main()
