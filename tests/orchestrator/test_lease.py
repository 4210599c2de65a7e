# The VM's lock as a lease: renewed while a backup works, taken over from
# another host once it ran out (no flag), never committed through once
# lost, hostile lock objects refused, and a server without conditional
# writes (a proxy that answers them 501, as OpenStack Swift's s3api does).
# "Another host" is the real binary in a UTS namespace of its own, with
# another hostname.
#
# Copyright (c) 2026 The s3chain authors
#
# SPDX-License-Identifier: GPL-2.0-or-later

import json
import time
from typing import Dict, Optional, Tuple

from harness import BackupTestCase, FaultProxy, Run

LEASE = 4


class NoConditionsProxy(FaultProxy):
    """Answers a PUT with If-Match or If-None-Match with 501
    NotImplemented, as OpenStack Swift's s3api does"""

    def refuses(self, method: str, headers) -> Optional[Tuple[int, str]]:
        if method == 'PUT' and (headers.get('If-Match') or
                                headers.get('If-None-Match')):
            return 501, 'NotImplemented'
        return None


class LeaseTestCase(BackupTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.lock_key = f'{self.bucket.prefix}/s3chain/vms/vm1/lock'

    def elsewhere(self, *extra: str) -> Run:
        """The command as another host (another pod) runs it: in a UTS
        namespace of its own, under another hostname"""
        return Run(self.args(*extra), self.env(), wrapper=[
            'unshare', '--uts', 'sh', '-c',
            'hostname s3chain-other-host && exec "$@"', 'sh'])

    def put_lock(self, host: str, pid: int, lease: int) -> None:
        self.bucket.put(self.lock_key, json.dumps({
            'host': host, 'pid': pid, 'since': int(time.time()),
            'lease': lease, 'owner': 'another-command'}).encode())

    def lock(self) -> Optional[dict]:
        try:
            return json.loads(self.bucket.get(self.lock_key))
        except self.bucket.client.exceptions.NoSuchKey:
            return None


class TestLease(LeaseTestCase):
    def test_renewed_while_the_backup_works(self) -> None:
        """A backup that lasts several leases keeps its lock: it renews
        it, and another host is refused all along"""
        self.slow_disks()
        run = self.start('--lease', str(LEASE))
        run.wait_started()
        modified = set()
        refused = 0
        start = time.monotonic()
        while run.proc.poll() is None and time.monotonic() - start < 60:
            try:
                head = self.bucket.client.head_object(
                    Bucket=self.bucket.name, Key=self.lock_key)
                modified.add(head['LastModified'])
            except self.bucket.client.exceptions.ClientError:
                pass
            if time.monotonic() - start > 2 * LEASE and not refused:
                other = self.elsewhere()
                code, err = other.finish()
                self.assertEqual(code, 7, err)
                self.assertIn('lease runs out', err)
                refused += 1
            time.sleep(0.3)
        code, err = run.finish()
        self.assertEqual(code, 0, err)
        self.assertGreater(time.monotonic() - start, 2 * LEASE)
        self.assertEqual(refused, 1)
        # renewed about once a second
        self.assertGreaterEqual(len(modified), 3)
        self.assertIsNone(self.lock())
        result = run.result()
        for disk in ('vd0', 'vd1'):
            self.assertRestores(result['backup'], disk,
                                self.vm.disk_bytes(disk))

    def test_taken_over_from_another_host_once_it_ran_out(self) -> None:
        """The bucket fails mid-backup and stays down past the end: the
        lock stays.  Another host takes it over once the lease ran out,
        with no flag"""
        first = self.backup()
        self.slow_disks()
        self.vm.write('vd0', '-P 0x31 0 100M')
        run = self.start('--lease', str(LEASE))
        run.wait_started()
        time.sleep(1)
        self.bucket.radosgw('stop')
        try:
            code, err = run.finish()
        finally:
            self.bucket.radosgw('start')
        self.assertEqual(code, 8, err)
        self.assertIn('lock', err)      # it could not remove it
        self.assertEqual(self.lock()['lease'], LEASE)

        deadline = time.monotonic() + 6 * LEASE
        while True:
            other = self.elsewhere()
            code, err = other.finish()
            if code != 7 or time.monotonic() > deadline:
                break
            self.assertIn('lease runs out', err)
            time.sleep(1)
        self.assertEqual(code, 0, err)
        self.assertIn('its lease ran out', err)
        after = other.result()
        self.assertEqual(after['disks'][0]['parent'], first['backup'])
        for disk in ('vd0', 'vd1'):
            self.assertRestores(after['backup'], disk,
                                self.vm.disk_bytes(disk))
        self.assertIsNone(self.lock())

    def test_live_lease_of_another_host(self) -> None:
        self.put_lock('s3chain-pod-7', 4242, 30)
        self.run_refused(self.args(), 7, words=(
            'locked', 's3chain-pod-7', 'lease runs out'))
        self.assertEqual(self.lock()['owner'], 'another-command')
        # the same, run out: taken over without any flag
        self.put_lock('s3chain-pod-7', 4242, LEASE)
        time.sleep(LEASE + 1.5)
        run = self.start()
        code, err = run.finish()
        self.assertEqual(code, 0, err)
        self.assertIn('took over the lock', err)
        self.assertIsNone(self.lock())

    def test_lost_lease_commits_nothing(self) -> None:
        """Another command takes the lock over while a backup works (as
        one may once a lease ran out): the backup must not commit"""
        first = self.backup()
        self.slow_disks()
        self.vm.write('vd1', '-P 0x32 0 60M')
        run = self.start('--lease', str(LEASE))
        run.wait_started()
        self.put_lock('s3chain-pod-8', 99, 600)
        code, err = run.finish()
        self.assertEqual(code, 7, err)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertIn('lost its lock', err)
        self.assertEqual([b['id'] for b in self.bucket.catalog()['backups']],
                         [first['backup']])
        # the other command's lock is left alone
        self.assertEqual(self.lock()['owner'], 'another-command')
        self.assertEqual(run.events[-1]['exit-code'], 7)

    def test_hostile_locks(self) -> None:
        catalog = self.bucket.catalog()
        cases = [
            (b'\x00\xff not json', 'not JSON'),
            (b'[1, 2]', 'not a JSON object'),
            (json.dumps({'host': 'h', 'pid': 'one', 'since': 1}).encode(),
             '"pid"'),
            (json.dumps({'host': 7, 'pid': 1, 'since': 1}).encode(),
             '"host"'),
            (json.dumps({'host': 'h', 'pid': 1, 'since': 1,
                         'lease': 10 ** 12, 'owner': 'x'}).encode(),
             '"lease"'),
            (json.dumps({'host': 'h', 'pid': 1, 'since': 1,
                         'lease': 5}).encode(), '"owner"'),
            (b'{"host": "' + b'h' * 100000 + b'"}', 'larger than any lock'),
        ]
        for body, words in cases:
            with self.subTest(words=words):
                self.bucket.put(self.lock_key, body)
                self.run_refused(self.args(), 11,
                                 words=(words, self.lock_key, 'delete'))
                self.assertEqual(self.bucket.get(self.lock_key), body)
        self.assertEqual(self.bucket.catalog(), catalog)


class TestWithoutConditionalWrites(LeaseTestCase):
    """A server that answers conditional PUTs 501: the lock falls back to
    put-wait-read, catalogs and images to look-then-put"""

    def setUp(self) -> None:
        super().setUp()
        self.proxy = NoConditionsProxy(self.bucket.endpoint)

    def tearDown(self) -> None:
        self.proxy.close()
        super().tearDown()

    def env(self, **extra: str) -> Dict[str, str]:
        return super().env(AWS_ENDPOINT_URL=self.proxy.endpoint, **extra)

    def test_chain_and_lock(self) -> None:
        run = self.start()
        code, err = run.finish()
        self.assertEqual(code, 0, err)
        self.assertIn('does not support conditional writes', err)
        self.assertGreater(self.proxy.refused, 0)
        full = run.result()
        at_full = {d: self.vm.disk_bytes(d) for d in ('vd0', 'vd1')}

        # a second command meets the first one's lock
        self.slow_disks()
        self.vm.write('vd0', '-P 0x33 1M 40M')
        run = self.start()
        run.wait_started()
        self.run_refused(self.args(), 7, words=('locked',))
        code, err = run.finish()
        self.assertEqual(code, 0, err)
        inc = run.result()
        self.assertEqual(inc['disks'][0]['parent'], full['backup'])
        for disk in ('vd0', 'vd1'):
            self.assertRestores(full['backup'], disk, at_full[disk])
            self.assertRestores(inc['backup'], disk,
                                self.vm.disk_bytes(disk))
        self.assertIsNone(self.lock())
