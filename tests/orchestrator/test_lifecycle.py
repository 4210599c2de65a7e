# `s3chain delete`, `prune`, `gc` and `backup --merge-after` against the
# real radosgw, a real VM, our sidecar and the real binary: every point
# left restores bit-exact after every deletion, merge, kill and refusal.
#
# Copyright (c) 2026 The s3chain authors
#
# SPDX-License-Identifier: GPL-2.0-or-later

import datetime
import json
import os
import signal
import subprocess
import time
import unittest
from typing import Dict, List, Optional, Set, Tuple

from harness import S3CHAIN, BackupTestCase, FaultProxy, Run, file_digest

DAY = 86400


class DenyDeletes(FaultProxy):
    """A bucket whose policy denies s3:DeleteObject"""

    def refuses(self, method: str, headers) -> Optional[Tuple[int, str]]:
        return (403, 'AccessDenied') if method == 'DELETE' else None


class LockedObjects(FaultProxy):
    """A bucket whose objects are under Object Lock retention, but for the
    delete probe: S3 answers a DeleteObjects 200, with an AccessDenied
    <Error> for each key"""

    def refuses(self, method: str, headers) -> Optional[tuple]:
        if method == 'POST':
            return 200, '', (
                '<?xml version="1.0"?><DeleteResult><Error><Key>'
                f'{self.key}</Key><Code>AccessDenied</Code><Message>Access '
                'Denied because object protected by object lock.</Message>'
                '</Error></DeleteResult>').encode()
        return None

    key = ''


class NoDeleteObjects(FaultProxy):
    """A server without DeleteObjects"""

    def refuses(self, method: str, headers) -> Optional[tuple]:
        return (501, 'NotImplemented') if method == 'POST' else None


class LifecycleCase(BackupTestCase):
    def setUp(self) -> None:
        super().setUp()
        # what each disk held at each backup's instant, by backup id
        self.expected: Dict[str, Dict[str, str]] = {}
        self.step = 0
        # what every command is given: the key of encrypted backups
        self.key_args: List[str] = []

    def lifecycle(self, command: str, *extra: str) -> List[str]:
        return [command, '--repo', self.bucket.repo, '--json',
                *self.key_args, *extra]

    def run_ok(self, argv: List[str], env=None) -> dict:
        run = Run(argv, env or self.env())
        code, err = run.finish()
        self.assertEqual(code, 0, err)
        return run.result()

    def delete(self, *ids: str) -> dict:
        args = []
        for backup_id in ids:
            args += ['--backup', backup_id]
        return self.run_ok(self.lifecycle('delete', '--vm', 'vm1', *args))

    def guest_writes(self) -> None:
        """Different writes each time: data, zeroes, a discard"""
        self.step += 1
        n = self.step
        self.vm.write('vd0', f'-P {n + 10} {(n * 5) % 120}M 1M')
        self.vm.write('vd0', f'-P {n + 60} {(n * 7) % 126}M 64k')
        self.vm.write('vd1', f'-P {n + 110} {(n * 3) % 60}M 512k')
        if n % 3 == 0:
            self.vm.write('vd1', f'-z {(n * 11) % 60}M 1M')

    def backup_point(self, *extra: str, env=None) -> dict:
        run = Run(self.args(*self.key_args, *extra), env or self.env())
        code, err = run.finish()
        self.assertEqual(code, 0, err)
        result = run.result()
        self.expected[result['backup']] = {
            d: self.vm.disk_digest(d) for d in ('vd0', 'vd1')}
        return result

    def restore_point(self, backup_id: str) -> Dict[str, str]:
        """Each disk of backup @backup_id, restored by the command"""
        catalog = self.bucket.catalog()
        backup = next(b for b in catalog['backups'] if b['id'] == backup_id)
        targets, out = [], {}
        for disk in backup['disks']:
            target = os.path.join(self.dir, f'restored-{disk["name"]}.raw')
            if os.path.exists(target):
                os.remove(target)
            targets += ['--target', f'{disk["name"]}={target}']
        self.run_ok(self.lifecycle('restore', '--vm', 'vm1', '--backup',
                                   backup_id, *targets))
        for disk in backup['disks']:
            target = os.path.join(self.dir, f'restored-{disk["name"]}.raw')
            out[disk['name']] = file_digest(target)
            os.remove(target)
        return out

    def listed(self) -> List[str]:
        catalog = self.bucket.catalog() or {'backups': []}
        return [b['id'] for b in catalog['backups']]

    def assertPointExact(self, backup_id: str) -> None:
        got = self.restore_point(backup_id)
        for disk, want in self.expected[backup_id].items():
            if got.get(disk, want) != want:
                self.fail(f'backup {backup_id} of {disk} is not the disk at '
                          f'its instant')

    def assertAllExact(self) -> None:
        """Every point listed restores as the disk was at its instant,
        and a deep verify finds nothing wrong"""
        catalog = self.bucket.catalog()
        for backup in catalog['backups']:
            self.assertNotIn('state', backup)
            self.assertPointExact(backup['id'])
        verify = self.run_ok(self.lifecycle('verify', '--vm', 'vm1',
                                            '--deep'))
        self.assertTrue(verify['intact'], verify)

    def chain(self, n: int, *extra: str) -> List[str]:
        ids = []
        for _ in range(n):
            ids.append(self.backup_point(*extra)['backup'])
            self.guest_writes()
        return ids

    def image_keys(self) -> List[str]:
        return sorted(k for k in self.bucket.objects()
                      if k.endswith('.qcow2'))


class TestDelete(LifecycleCase):
    def test_full_middle_and_newest_of_a_chain(self) -> None:
        ids = self.chain(9)
        catalog = self.bucket.catalog()
        self.assertEqual([b['type'] for b in catalog['backups']],
                         ['full'] + ['incremental'] * 8)

        # the full: its successor's changes go into the full's image
        result = self.delete(ids[0])
        self.assertEqual(result['deleted'], [ids[0]])
        self.assertEqual(result['merges'], 2)
        self.assertEqual(self.listed(), ids[1:])
        first = self.bucket.catalog()['backups'][0]
        self.assertEqual(first['type'], 'full')
        self.assertTrue(first['disks'][0]['image'].endswith(
            f'/{ids[0]}.qcow2'))
        self.assertEqual(len(self.image_keys()), 16)
        self.assertAllExact()

        # a point in the middle
        self.delete(ids[4])
        self.assertEqual(self.listed(), ids[1:4] + ids[5:])
        self.assertAllExact()

        # the newest: the next backup holds everything since its parent
        self.delete(ids[8])
        self.assertEqual(self.listed(), ids[1:4] + ids[5:8])
        self.assertEqual(len(self.image_keys()), 12)
        after = self.backup_point()
        self.assertAllExact()
        for disk in after['disks']:
            if disk['type'] == 'incremental':
                self.assertEqual(disk['parent'], ids[7])
            else:
                self.assertTrue(disk['reason'], disk)

    def test_retried_delete_succeeds_and_says_so(self) -> None:
        ids = self.chain(2)
        self.delete(ids[0])
        again = self.delete(ids[0])
        self.assertEqual(again['deleted'], [])
        self.assertEqual([g['id'] for g in again['already-deleted']],
                         [ids[0]])
        self.assertEqual(self.listed(), ids[1:])
        self.assertAllExact()


class TestEncrypted(LifecycleCase):
    def test_delete_prune_merge_and_gc(self) -> None:
        """An encrypted, compressed chain: merges in the bucket keep every
        image sealed, and every point left exact"""
        key_file = os.path.join(self.dir, 'key')
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, 'wb') as f:
            f.write(os.urandom(32))
        self.key_args = ['--key-file', key_file]
        ids = [self.backup_point('--encrypt', '--compress', 'zstd')['backup']]
        self.guest_writes()
        ids += self.chain(5, '--merge-after', '5')
        # the sixth backup merged the oldest away
        self.assertEqual(self.listed(), ids[1:])
        self.delete(ids[1])
        self.delete(ids[3])
        self.assertEqual(self.listed(), [ids[2]] + ids[4:])
        self.run_ok(self.lifecycle('prune', '--vm', 'vm1', '--keep-last',
                                   '2'))
        self.assertEqual(self.listed(), ids[4:])
        self.run_ok(self.lifecycle('gc', '--vm', 'vm1', '--grace', '0'))
        for key in self.image_keys():
            manifest = json.loads(self.bucket.get(key))
            self.assertEqual((manifest['version'], manifest['compress']),
                             (7, 'zstd'), key)
        self.assertAllExact()


PERIODS = {'hourly': '%Y-%m-%d %H', 'daily': '%Y-%m-%d', 'weekly': '%G-%V',
           'monthly': '%Y-%m', 'yearly': '%Y'}


def restic_keeps(times: List[datetime.datetime], rule: str,
                 n: int) -> Set[int]:
    """Which of @times (newest first) restic's --keep-RULE n keeps"""
    kept, last = set(), None
    for i, t in enumerate(times):
        period = i if rule == 'last' else t.strftime(PERIODS[rule])
        if n and period != last:
            kept.add(i)
            last = period
            n -= 1
    return kept


class TestPrune(LifecycleCase):
    # when each backup was made, in days before now: years, months, weeks,
    # days and hours apart
    AGES = [800, 400, 370, 45, 40, 20, 15, 9, 8.5, 3, 2.04, 2, 0.1, 0]

    def test_keep_rules(self) -> None:
        ids = []
        for age in self.AGES:
            offset = str(-int(age * DAY))
            ids.append(self.backup_point(
                env=self.env(S3CHAIN_TEST_TIME_OFFSET=offset))['backup'])
            self.guest_writes()
        catalog = self.bucket.catalog()
        times = [datetime.datetime.fromisoformat(
                     b['time'].replace('Z', '+00:00'))
                 for b in catalog['backups']]
        self.assertEqual(sorted(times), times)
        newest_first = list(reversed(ids))
        t_newest_first = list(reversed(times))

        def dry(*rules: str) -> Set[str]:
            result = self.run_ok(self.lifecycle(
                'prune', '--vm', 'vm1', '--dry-run', *rules))
            vm = result['vms'][0]
            kept = {k['id'] for k in vm['kept']}
            self.assertEqual(kept | {d['id'] for d in vm['deleted']},
                             set(ids))
            self.assertEqual(result['backups-deleted'], 0)
            return kept

        for rule, n in (('last', 3), ('hourly', 2), ('daily', 4),
                        ('weekly', 3), ('monthly', 3), ('yearly', 2)):
            want = {newest_first[i]
                    for i in restic_keeps(t_newest_first, rule, n)}
            self.assertEqual(dry(f'--keep-{rule}', str(n)), want,
                             f'--keep-{rule} {n}')
        within = {i for i, t in zip(ids, times)
                  if times[-1] - t <= datetime.timedelta(days=10)}
        self.assertEqual(dry('--keep-within', '10d'), within)
        self.assertEqual(self.listed(), ids)

        # a real prune: the table says why, and every point kept is exact
        want = {newest_first[i] for i in
                restic_keeps(t_newest_first, 'daily', 3) |
                restic_keeps(t_newest_first, 'yearly', 2)}
        result = self.run_ok(self.lifecycle(
            'prune', '--vm', 'vm1', '--keep-daily', '3', '--keep-yearly',
            '2'))
        self.assertEqual(set(self.listed()), want)
        self.assertEqual(result['backups-deleted'], len(ids) - len(want))
        self.assertGreater(result['vms'][0]['bytes-freed'], 0)
        for kept in result['vms'][0]['kept']:
            self.assertTrue(set(kept['reasons']) <= {'daily', 'yearly'})
        self.assertAllExact()
        table = subprocess.run(
            [S3CHAIN, 'prune', '--repo', self.bucket.repo, '--vm',
             'vm1', '--keep-daily', '3', '--keep-yearly', '2', '--dry-run',
             '--progress', 'none'], env=self.env(), check=True,
            capture_output=True, text=True).stdout
        self.assertIn('daily', table)
        self.assertNotIn('delete ', table)


class TestMergeAfter(LifecycleCase):
    def test_incremental_forever(self) -> None:
        limit, total = 5, 18
        ids = []
        for n in range(total):
            result = self.backup_point('--merge-after', str(limit))
            ids.append(result['backup'])
            for disk in result['disks']:
                # no full is read from the VM after the first
                self.assertEqual(disk['type'], 'full' if n == 0
                                 else 'incremental', disk)
            catalog = self.bucket.catalog()
            listed = [b['id'] for b in catalog['backups']]
            self.assertEqual(listed, ids[-limit:])
            for disk in ('vd0', 'vd1'):
                length, at = 0, ids[-1]
                while at:
                    length += 1
                    backup = next(b for b in catalog['backups']
                                  if b['id'] == at)
                    at = next(d for d in backup['disks']
                              if d['name'] == disk)['parent']
                self.assertLessEqual(length, limit)
            self.guest_writes()
        self.assertEqual(len(self.image_keys()), 2 * limit)
        self.assertAllExact()


class TestGc(LifecycleCase):
    def test_finds_and_removes_only_garbage(self) -> None:
        ids = self.chain(2)
        # a backup killed mid-copy leaves an image no catalog names
        run = Run(self.args('--buffer-size', '4M'), self.env())
        run.wait_started()
        run.proc.send_signal(signal.SIGKILL)
        run.finish()
        listed_images = {d['image'] for b in self.bucket.catalog()['backups']
                         for d in b['disks']}
        failed = [k for k in self.image_keys() if k not in listed_images]
        self.assertTrue(failed)
        # what killed writers and failed deletes leave on a listed image
        image = sorted(listed_images)[0]
        chunk = next(k for k in self.bucket.objects()
                     if k.startswith(image + '.d/'))
        planted = {
            image + '.d/' + chunk.rsplit('/', 1)[1].split('.')[0] +
            '.ffff.1': 'superseded-chunks',
            image + '.lock': 'stale-image-locks',
            image + '.scratch.d/0000000000000000.1.1': 'scratch-objects',
        }
        for key in planted:
            self.bucket.put(key, b'x' * 100)
        vm_lock = f'{self.bucket.prefix}/s3chain/vms/vm1/lock'
        self.assertIn(vm_lock, self.bucket.objects())

        # the killed backup's lock is taken over and gone; young objects
        # stay for the grace period
        young = self.run_ok(self.lifecycle('gc', '--vm', 'vm1'))
        self.assertEqual(young['objects'], 0)
        before = self.bucket.objects()
        self.assertNotIn(vm_lock, before)
        doomed = {k for k in before
                  if any(k == f or k.startswith(f + '.') for f in failed)}
        doomed |= set(planted)
        self.assertGreaterEqual(young['kept-young'], len(doomed))
        dry = self.run_ok(self.lifecycle('gc', '--vm', 'vm1', '--grace', '0',
                                         '--dry-run'))
        self.assertEqual(dry['objects'], len(doomed))
        for kind in set(planted.values()):
            self.assertGreaterEqual(dry[kind]['objects'], 1, kind)
        self.assertEqual(dry['unreferenced-image-objects']['objects'],
                         len(doomed) - len(planted))
        self.assertEqual(self.bucket.objects(), before)

        done = self.run_ok(self.lifecycle('gc', '--vm', 'vm1', '--grace',
                                          '0'))
        self.assertEqual(done['objects'], len(doomed))
        self.assertEqual(set(self.bucket.objects()), set(before) - doomed)
        self.assertEqual(self.listed(), ids)
        self.assertAllExact()
        again = self.run_ok(self.lifecycle('gc', '--all', '--grace', '0'))
        self.assertEqual(again['objects'], 0)


    def test_deletes_a_thousand_at_a_time(self) -> None:
        """gc deletes with DeleteObjects, a request a thousand keys; a key
        under retention is refused by name; a server without it gets one
        DELETE a key"""
        ids = self.chain(1)
        dead = f'{self.bucket.prefix}/s3chain/vms/vm1/disks/vd0/' \
               '20200101T000000Z-dead.qcow2'
        planted = [dead + f'.d/{i:016x}.1.1' for i in range(1100)]
        for key in planted:
            self.bucket.put(key, b'x')
        gc = self.lifecycle('gc', '--vm', 'vm1', '--grace', '0')

        locked = LockedObjects(self.bucket.endpoint)
        locked.key = planted[0]
        self.addCleanup(locked.close)
        run = Run(gc, self.env(AWS_ENDPOINT_URL=locked.endpoint))
        code, err = run.finish()
        self.assertEqual(code, 5, err)
        self.assertIn(f'refuses to delete s3://{self.bucket.name}/'
                      f'{planted[0]} (AccessDenied)', err)
        self.assertEqual(len([l for l in err.splitlines() if l.strip()]), 1,
                         err)
        self.assertTrue(set(planted) <= set(self.bucket.objects()))

        counting = FaultProxy(self.bucket.endpoint)
        self.addCleanup(counting.close)
        done = self.run_ok(gc, self.env(AWS_ENDPOINT_URL=counting.endpoint))
        self.assertEqual(done['objects'], len(planted))
        self.assertFalse(set(planted) & set(self.bucket.objects()))
        self.assertEqual(counting.methods['POST'], 2)
        # the VM's lock and the like, not a DELETE a key
        self.assertLess(counting.methods['DELETE'], 5)

        for key in planted[:5]:
            self.bucket.put(key, b'x')
        without = NoDeleteObjects(self.bucket.endpoint)
        self.addCleanup(without.close)
        done = self.run_ok(gc, self.env(AWS_ENDPOINT_URL=without.endpoint))
        self.assertEqual(done['objects'], 5)
        self.assertFalse(set(planted) & set(self.bucket.objects()))
        self.assertGreaterEqual(without.methods['DELETE'], 5)
        self.assertEqual(self.listed(), ids)
        self.assertAllExact()


class TestCrash(LifecycleCase):
    """SIGKILL at each step of a deletion and its merge; the next command
    finishes it, and every point restores exact throughout"""

    def killed_delete(self, backup_id: str, step: str) -> None:
        run = Run(self.lifecycle('delete', '--vm', 'vm1', '--backup',
                                 backup_id),
                  self.env(S3CHAIN_TEST_KILL_AT=step))
        code, _ = run.finish()
        self.assertEqual(code, -signal.SIGKILL, step)

    def assertListedExact(self) -> None:
        """Each point listed and not going restores exact; a going one is
        refused"""
        for backup in self.bucket.catalog()['backups']:
            if backup.get('state') == 'going':
                self.run_refused(['restore', '--vm', 'vm1', '--repo',
                                  self.bucket.repo, '--backup', backup['id'],
                                  '--target', os.path.join(self.dir, 'x'),
                                  '--json'], 4, words=['being deleted'])
                continue
            self.assertPointExact(backup['id'])

    def test_killed_at_every_step(self) -> None:
        self.chain(3)
        recoveries = [
            self.lifecycle('gc', '--vm', 'vm1', '--grace', '3600'),
            self.lifecycle('prune', '--vm', 'vm1', '--keep-last', '100'),
            self.args(),
        ]
        steps = ['marked', 'merging', 'merged', 'rebased', 'repointed',
                 'unlinked', 'emptied', 'collecting']
        for n, step in enumerate(steps):
            # the oldest (the full, merged into), or one in the middle
            victim = self.listed()[n % 2]
            self.killed_delete(victim, step)
            self.assertListedExact()
            recovery = recoveries[n % len(recoveries)]
            if recovery[0] == 'backup':
                self.backup_point()
            else:
                self.run_ok(recovery)
            self.assertNotIn(victim, self.listed(), step)
            self.assertNotIn('garbage', self.bucket.catalog(), step)
            self.assertListedExact()
            while len(self.listed()) < 3:
                self.guest_writes()
                self.backup_point()
        self.assertAllExact()
        # nothing is left that no point needs
        dry = self.run_ok(self.lifecycle('gc', '--vm', 'vm1', '--grace', '0',
                                         '--dry-run'))
        self.assertEqual(dry['objects'], 0, dry)

    def test_bucket_stopped_mid_merge(self) -> None:
        ids = self.chain(3)
        run = Run(self.lifecycle('delete', '--vm', 'vm1', '--backup',
                                 ids[0], '--progress', 'json'), self.env())
        run.wait_event('progress')
        self.bucket.radosgw('stop')
        time.sleep(3)
        self.bucket.radosgw('start')
        code, err = run.finish()
        if code:
            self.assertEqual(code, 8, err)
            self.assertListedExact()
            self.run_ok(self.lifecycle('delete', '--vm', 'vm1', '--backup',
                                       ids[0]))
        self.assertEqual(self.listed(), ids[1:])
        self.assertAllExact()


class TestBadInput(LifecycleCase):
    def refused_unchanged(self, argv: List[str], code: int, words=(),
                          env=None) -> None:
        before = self.bucket.objects()
        self.run_refused(argv, code, env=env, words=words)
        self.assertEqual(self.bucket.objects(), before)

    def test_unknown_backup(self) -> None:
        self.chain(1)
        self.refused_unchanged(self.lifecycle(
            'delete', '--vm', 'vm1', '--backup', '20200101T000000Z-0000'),
            4, words=['20200101T000000Z-0000'])

    def test_unknown_vm(self) -> None:
        self.refused_unchanged(self.lifecycle(
            'delete', '--vm', 'nosuch', '--backup', 'x'), 4,
            words=['nosuch'])

    def test_prune_without_a_rule(self) -> None:
        self.chain(1)
        self.refused_unchanged(self.lifecycle('prune', '--vm', 'vm1'), 2,
                               words=['keep'])

    def test_prune_vm_and_all(self) -> None:
        self.chain(1)
        self.refused_unchanged(self.lifecycle(
            'prune', '--vm', 'vm1', '--all', '--keep-last', '1'), 2,
            words=['--all'])

    def test_bad_keep_within(self) -> None:
        self.chain(1)
        self.refused_unchanged(self.lifecycle(
            'prune', '--vm', 'vm1', '--keep-within', '3x'), 2,
            words=['--keep-within'])

    def test_merge_after_with_chain_limit(self) -> None:
        self.refused_unchanged(self.args('--merge-after', '3',
                                         '--chain-limit', '5'), 2,
                               words=['--merge-after'])

    def test_locked_vm(self) -> None:
        ids = self.chain(2)
        # a full backup that holds the lock for half a minute
        self.slow_disks()
        run = Run(self.args('--full'), self.env())
        run.wait_started()
        try:
            for argv in (self.lifecycle('prune', '--vm', 'vm1',
                                        '--keep-last', '1'),
                         self.lifecycle('delete', '--vm', 'vm1',
                                        '--backup', ids[0]),
                         self.lifecycle('gc', '--vm', 'vm1', '--grace', '0')):
                self.run_refused(argv, 7, words=['vm1'])
        finally:
            code, err = run.finish()
        self.assertEqual(code, 0, err)
        self.assertEqual(len(self.listed()), 3)

    def test_bucket_refuses_deletes(self) -> None:
        ids = self.chain(2)
        proxy = DenyDeletes(self.bucket.endpoint)
        try:
            env = self.env(AWS_ENDPOINT_URL=proxy.endpoint)
            before = self.bucket.objects()
            run = Run(self.lifecycle('delete', '--vm', 'vm1', '--backup',
                                     ids[1]), env)
            code, err = run.finish()
        finally:
            proxy.close()
        self.assertEqual(code, 5, err)
        self.assertIn('refuses to delete', err)
        self.assertEqual(len([l for l in err.splitlines() if l.strip()]), 1,
                         err)
        # nothing half-done: the point stays, restorable
        self.assertEqual(self.listed(), ids)
        self.assertEqual(set(self.bucket.objects()) - {
            k for k in self.bucket.objects() if k.endswith('catalog.json')},
            set(before) - {k for k in before if k.endswith('catalog.json')})
        self.assertAllExact()


if __name__ == '__main__':
    unittest.main()
