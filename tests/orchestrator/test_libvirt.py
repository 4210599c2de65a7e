# `s3chain backup --libvirt` against a real libvirtd, a TCG domain with a
# qcow2 and a raw disk whose Linux guest writes all the time, our sidecar,
# the real radosgw and the real binary: every point exact, no taint,
# faults mid-backup, fallbacks and bad input.
#
# Copyright (c) 2026 The s3chain authors
#
# SPDX-License-Identifier: GPL-2.0-or-later

import os
import shutil
import signal
import subprocess
import tempfile
import time
import unittest
from typing import Dict, List, Optional

from harness import (Bucket, BucketFaults, CommandRuns, FaultProxy, Run,
                     command_env)
from libvirt_guest import (DISKS, URI, Domain, last_record, libvirtd,
                           replay, virsh)

# a new progress line of the guest comes every 500 records
GUEST_PROGRESS_WAIT = 120


class LibvirtTestCase(CommandRuns, unittest.TestCase):
    start_domain = True
    # the disks that backups hold and restores are checked on
    backed_up = tuple(DISKS)

    @classmethod
    def setUpClass(cls) -> None:
        libvirtd('start')

    @classmethod
    def tearDownClass(cls) -> None:
        libvirtd('stop')

    def setUp(self) -> None:
        self.bucket = Bucket()
        self.dir = tempfile.mkdtemp(prefix='s3chain-lv-', dir='/tmp')
        self.runtime = os.path.join(self.dir, 'run')
        self.scratch = os.path.join(self.dir, 'scratch')
        os.mkdir(self.scratch)
        self.dom = Domain(self.dir)
        if self.start_domain:
            self.dom.start()

    def tearDown(self) -> None:
        self.dom.remove()
        # a sidecar that a killed run left behind
        subprocess.run(['pkill', '-f', self.runtime], check=False)
        self.bucket.cleanup()
        shutil.rmtree(self.dir, ignore_errors=True)

    def env(self, **extra: str) -> Dict[str, str]:
        return command_env(self.bucket, **extra)

    def args(self, *extra: str) -> List[str]:
        return ['backup', '--libvirt', self.dom.name, '--connect', URI,
                '--repo', self.bucket.repo, '--runtime-dir', self.runtime,
                '--scratch-dir', self.scratch, '--json', *extra]

    def repo_vm(self) -> str:
        """The VM's name in the repository"""
        return self.dom.name

    def types(self, result: dict) -> Dict[str, tuple]:
        return {d['name']: (d['type'], d['reason']) for d in result['disks']}

    def restored(self, backup_id: str,
                 targets: Optional[Dict[str, str]] = None
                 ) -> Dict[str, bytes]:
        """Every disk of a backup, as `s3chain restore` writes it onto
        @targets (disk: path; by default new files, removed after)"""
        made = targets is None
        if made:
            targets = {d: os.path.join(self.dir, f'restored-{d}.raw')
                       for d in self.backed_up}
        args = ['restore', '--vm', self.repo_vm(), '--repo',
                self.bucket.repo, '--backup', backup_id, '--json']
        for disk, path in targets.items():
            args += ['--target', f'{disk}={path}']
        code, err = Run(args, self.env()).finish()
        self.assertEqual(code, 0, err)
        out = {}
        for disk, path in targets.items():
            # a block device may be larger than the disk
            with open(path, 'rb') as f:
                out[disk] = f.read(DISKS[disk][1])
            if made:
                os.remove(path)
        return out

    def assertSameDisks(self, result: dict, images: Dict[str, bytes],
                        expected: Dict[str, bytes], what: str) -> None:
        for disk in self.backed_up:
            self.assertEqual(len(images[disk]), len(expected[disk]))
            if images[disk] != expected[disk]:
                first = next(i for i in range(len(expected[disk]))
                             if images[disk][i] != expected[disk][i])
                self.fail(f'backup {result["backup"]} of {disk} is not '
                          f'{what}: first difference at byte {first}')

    def assertExact(self, result: dict,
                    targets: Optional[Dict[str, str]] = None) -> int:
        """The disks are the guest's at one instant; its last record"""
        images = self.restored(result['backup'], targets)
        upto = last_record(images, self.dom.start_seq)
        expected = replay(self.dom.base, self.dom.start_seq, upto)
        self.assertSameDisks(result, images, expected,
                             f'the guest\'s disk after record {upto}')
        return upto

    def assertImages(self, result: dict, images: Dict[str, bytes]) -> None:
        """The backup restores to the shut-off domain's images"""
        self.assertSameDisks(result, self.restored(result['backup']), images,
                             'the shut-off domain\'s image')

    def assertGuestWrites(self) -> None:
        """The guest goes on writing, and no write of it failed"""
        seen = self.dom.records_written()
        deadline = time.monotonic() + GUEST_PROGRESS_WAIT
        while self.dom.records_written() <= seen:
            self.assertLess(time.monotonic(), deadline,
                            'the guest stopped writing')
            time.sleep(0.5)
        self.assertEqual(self.dom.write_failures(), [])

    def assertThawed(self) -> None:
        self.assertEqual(self.dom.frozen(), '')

    def assertUntainted(self) -> None:
        log = self.dom.log()
        self.assertIn('qemu-system-x86_64', log)
        self.assertNotIn('tainted', log)

    def assertNoScratchLeft(self) -> None:
        self.assertEqual(os.listdir(self.scratch), [])

    def refused(self, args, code: int, words=()) -> str:
        """Refused in one line, with nothing written and no checkpoint"""
        before = self.bucket.objects()
        checkpoints = self.dom.checkpoints()
        err = self.run_refused(args, code, words=words)
        self.assertEqual(self.bucket.objects(), before)
        self.assertEqual(self.dom.checkpoints(), checkpoints)
        return err


class TestLibvirtChain(LibvirtTestCase):
    def test_full_then_incrementals_while_the_guest_writes(self) -> None:
        full = self.backup()
        self.assertEqual(self.types(full)['vda'],
                         ('full', 'first backup of this disk'))
        self.assertEqual(self.types(full)['vdb'][0], 'full')
        time.sleep(1)
        inc1 = self.backup()
        self.assertEqual(self.types(inc1)['vda'][0], 'incremental')
        self.assertEqual(inc1['disks'][0]['parent'], full['backup'])
        # libvirt keeps no checkpoint of a raw disk
        self.assertEqual(self.types(inc1)['vdb'][0], 'full')
        self.assertIn('raw', self.types(inc1)['vdb'][1])
        time.sleep(1)
        inc2 = self.backup()
        self.assertEqual(inc2['disks'][0]['parent'], inc1['backup'])

        # the scratch held what the guest rewrote meanwhile, at most the
        # disks' size
        for point in (full, inc1, inc2):
            self.assertLessEqual(point['scratch-bytes'],
                                 sum(d[1] for d in DISKS.values()))
        # an incremental copies what changed, not the disk
        self.assertGreater(full['disks'][0]['bytes-copied'], 40 * 2**20)
        self.assertLess(inc1['disks'][0]['bytes-copied'], 24 * 2**20)
        last = [self.assertExact(p) for p in (full, inc1, inc2)]
        self.assertEqual(last, sorted(last))
        self.assertLess(last[0], last[2], 'the guest wrote nothing')

        self.assertUntainted()
        self.assertEqual(self.dom.checkpoints(), ['s3chain-' + inc2['backup']])
        self.assertNoScratchLeft()
        # each backup froze the guest's filesystems through its agent,
        # then thawed them
        self.assertEqual(self.dom.freezes(), (3, 3))
        self.assertThawed()
        self.assertGuestWrites()
        catalog = self.bucket.catalog(self.dom.name)
        self.assertEqual([b['source'] for b in catalog['backups']],
                         ['libvirt'] * 3)
        self.assertEqual(catalog['backups'][0]['disks'][0]['serial'],
                         'SERIAL-vda')


class TestLibvirtFallbacks(LibvirtTestCase):
    def test_checkpoint_deleted_with_virsh(self) -> None:
        first = self.backup()
        virsh('checkpoint-delete', self.dom.name, 's3chain-' + first['backup'])
        after = self.backup()
        vda = self.types(after)['vda']
        self.assertEqual(vda[0], 'full')
        self.assertIn('s3chain-' + first['backup'], vda[1])
        self.assertExact(after)

    def test_full_flag(self) -> None:
        self.backup()
        after = self.backup('--full')
        self.assertEqual(self.types(after)['vda'], ('full', '--full was given'))
        self.assertExact(after)

    def test_restart(self) -> None:
        self.backup()
        self.dom.restart()
        after = self.backup()
        self.assertEqual(self.types(after)['vdb'][0], 'full')
        self.assertExact(after)
        self.assertUntainted()


class SlowUploads(FaultProxy):
    """Holds every upload a quarter of a second: a full backup of the
    domain's disks takes a few seconds"""

    def holds(self, method: str) -> float:
        return 0.25 if method == 'PUT' else 0


class TestLibvirtFaults(BucketFaults, LibvirtTestCase):
    """Each fault strikes mid-backup while the guest keeps writing"""

    def fault(self, strike, *extra: str, env=None) -> int:
        first = self.backup()
        catalog = self.bucket.catalog(self.dom.name)
        # a full copy, slowed by a small buffer: the fault meets it running
        run = self.start('--full', '--buffer-size', '4M', *extra, env=env)
        run.wait_started()
        strike(run)
        code, err = run.finish()
        self.assertNotEqual(code, 0, 'the backup survived the fault')
        if run.proc.returncode != -signal.SIGKILL:
            self.assertEqual(run.events[-1]['event'], 'error', err)
        self.assertEqual(self.bucket.catalog(self.dom.name), catalog)
        if virsh('domstate', self.dom.name).strip() != 'running':
            self.dom.restart()
        self.assertGuestWrites()
        self.assertThawed()

        after = self.backup()
        if self.dom.start_seq == 1:
            # everything since the first backup is in the next one
            self.assertEqual(self.types(after)['vda'][0], 'incremental')
            self.assertEqual(after['disks'][0]['parent'], first['backup'])
        self.assertExact(after)
        self.assertEqual(self.dom.checkpoints(),
                         ['s3chain-' + after['backup']])
        self.assertNoScratchLeft()
        self.assertUntainted()
        return code

    def test_domain_destroyed(self) -> None:
        self.assertEqual(self.fault(lambda _run: self.dom.destroy()), 3)

    def test_libvirtd_restarted(self) -> None:
        """The job goes on in QEMU: the command connects again, ends it"""
        first = self.backup()
        run = self.start('--full', '--buffer-size', '4M')
        run.wait_started()
        libvirtd('restart')
        code, err = run.finish()
        self.assertEqual(code, 0, err)
        during = run.result()
        self.assertExact(during)
        self.assertEqual(self.dom.checkpoints(),
                         ['s3chain-' + during['backup']])
        self.assertNoScratchLeft()
        self.assertGuestWrites()
        after = self.backup()
        self.assertEqual(after['disks'][0]['parent'], during['backup'])
        self.assertExact(after)
        self.assertUntainted()
        self.assertNotEqual(first['backup'], during['backup'])

    def test_sigterm(self) -> None:
        def strike(run) -> None:
            run.proc.send_signal(signal.SIGTERM)
        self.assertEqual(self.fault(strike), 9)

    def test_sigkill_at_once(self) -> None:
        def strike(run) -> None:
            run.proc.kill()
        self.fault(strike)

    def test_sigkill_later(self) -> None:
        """Killed once bytes are copied; the uploads are held a while, so
        that the copy can't end before the kill, however fast it is"""
        proxy = SlowUploads(self.bucket.endpoint)
        self.addCleanup(proxy.close)

        def strike(run) -> None:
            while run.wait_event('progress')['bytes-done'] == 0:
                pass
            run.proc.kill()
        self.fault(strike, env=self.env(AWS_ENDPOINT_URL=proxy.endpoint))


class TestLibvirtShutOff(LibvirtTestCase):
    """A shut-off domain's images, read directly"""

    def test_incremental_after_a_clean_shutdown(self) -> None:
        online = self.backup()
        time.sleep(1)
        self.dom.shutdown()
        images = self.dom.images_now()
        checkpoints = self.dom.checkpoints()
        off = self.backup()
        self.assertEqual(self.types(off)['vda'][0], 'incremental')
        self.assertIn('s3chain-' + online['backup'], self.types(off)['vda'][1])
        self.assertEqual(off['disks'][0]['parent'], online['backup'])
        self.assertEqual(self.types(off)['vdb'][0], 'full')
        # what changed since the checkpoint, not the disk
        self.assertLess(off['disks'][0]['bytes-copied'], 24 * 2**20)
        self.assertNotIn('scratch-bytes', off)
        # both points restore exactly; the shut-off one is the images
        self.assertImages(off, images)
        self.assertExact(online)
        # libvirt makes no checkpoint of a shut-off domain: the backup
        # names the one whose bitmap goes on recording for the next
        self.assertEqual(self.dom.checkpoints(), checkpoints)
        entry = self.bucket.catalog(self.dom.name)['backups'][-1]
        self.assertTrue(entry['offline'])
        self.assertEqual({d['name']: d['checkpoint'] for d in entry['disks']},
                         {'vda': 's3chain-' + online['backup'], 'vdb': None})

        # running again, the domain's next backup follows on from it
        self.dom.start_again()
        after = self.backup()
        self.assertEqual(self.types(after)['vda'][0], 'incremental')
        self.assertEqual(after['disks'][0]['parent'], off['backup'])
        self.assertExact(after)
        self.assertEqual(self.dom.checkpoints(), ['s3chain-' + after['backup']])
        self.assertUntainted()
        self.assertNoScratchLeft()

    def full_backup(self, images: Dict[str, bytes], why: str) -> None:
        """The shut-off domain's next backup: its qcow2 disk full for
        reason @why, both disks its images"""
        result = self.backup()
        self.assertEqual(self.types(result)['vda'][0], 'full')
        self.assertIn(why, self.types(result)['vda'][1])
        self.assertImages(result, images)

    def test_without_checkpoints(self) -> None:
        self.dom.destroy()
        images = self.dom.images_now()
        self.full_backup(images, 'first backup of this disk')
        # no checkpoint of ours was there to follow
        self.full_backup(images, 'no checkpoint')

    def test_after_a_crash(self) -> None:
        """QEMU killed: a bitmap it left in use can't be trusted"""
        self.backup()
        # the checkpoint's bitmap is stored in the image at the shutdown,
        # and marked in use at the next start
        self.dom.shutdown()
        self.dom.start_again()
        self.dom.kill()
        self.full_backup(self.dom.images_now(), 'inconsistent')

    def test_domain_started_during_the_backup(self) -> None:
        """The start is not held up; the backup gives up cleanly"""
        self.backup()
        self.dom.shutdown()
        catalog = self.bucket.catalog(self.dom.name)
        run = self.start('--buffer-size', '4M')
        run.wait_started()
        # held still mid-read, so that the start surely meets it
        run.proc.send_signal(signal.SIGSTOP)
        try:
            self.dom.start_again()
            self.assertGuestWrites()
        finally:
            run.proc.send_signal(signal.SIGCONT)
        code, err = run.finish()
        self.assertEqual(code, 8, err)
        self.assertIn('started', err)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertEqual(self.bucket.catalog(self.dom.name), catalog)
        after = self.backup()
        self.assertEqual(self.types(after)['vda'][0], 'incremental')
        self.assertExact(after)
        self.assertUntainted()


class TestLibvirtRestore(LibvirtTestCase):
    def test_onto_the_domains_disks(self) -> None:
        full = self.backup()
        time.sleep(1)
        self.backup()
        expected = self.restored(full['backup'])
        args = ['restore', '--libvirt', self.dom.name, '--connect', URI,
                '--repo', self.bucket.repo, '--backup', full['backup'],
                '--json']

        self.run_refused(args, 10, words=('running',))

        self.dom.destroy()
        run = Run(args, self.env())
        code, err = run.finish()
        self.assertEqual(code, 0, err)
        self.assertEqual({d['name']: d['format'] for d in run.result()['disks']},
                         {'vda': 'qcow2', 'vdb': 'raw'})
        self.assertEqual(self.dom.images_now(), expected)
        # their bitmaps went with the old images
        self.assertEqual(self.dom.checkpoints(), [])
        self.assertEqual([f for f in os.listdir(self.dir) if 'partial' in f],
                         [])

        # the domain runs on them, and its next backup is full and exact
        self.dom.restart()
        after = self.backup()
        self.assertEqual(self.types(after)['vda'][0], 'full')
        self.assertExact(after)


class TestLibvirtBadInput(LibvirtTestCase):
    def test_unknown_domain(self) -> None:
        args = self.args()
        args[args.index('--libvirt') + 1] = 'no-such-domain'
        self.refused(args, 4, words=('no-such-domain',))

    def test_unreachable_uri(self) -> None:
        args = self.args()
        uri = 'qemu+unix:///system?socket=/nonexistent/libvirt-sock'
        args[args.index('--connect') + 1] = uri
        self.refused(args, 3, words=('/nonexistent/libvirt-sock',))

    def test_qmp_and_libvirt_together(self) -> None:
        self.refused(self.args('--qmp', '/tmp/x.qmp'), 2,
                     words=('--libvirt',))

    def test_shut_off_domain_with_a_network_disk(self) -> None:
        self.dom.destroy()
        xml = self.dom.xml().replace(
            f"<disk type='file' device='disk'>\n"
            f"      <driver name='qemu' type='raw'/>\n"
            f"      <source file='{self.dom.paths['vdb']}'/>",
            "<disk type='network' device='disk'>\n"
            "      <driver name='qemu' type='raw'/>\n"
            "      <source protocol='nbd' name='x'><host transport='unix' "
            "socket='/nonexistent/nbd.sock'/></source>")
        self.assertIn('/nonexistent/nbd.sock', xml)
        path = os.path.join(self.dir, 'network.xml')
        with open(path, 'w') as f:
            f.write(xml)
        virsh('define', path)
        self.refused(self.args(), 2, words=('vdb', 'not a local file'))

    def test_scratch_without_room(self) -> None:
        small = os.path.join(self.dir, 'small')
        os.mkdir(small)
        subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1m', 'tmpfs',
                        small], check=True)
        try:
            args = self.args()
            args[args.index('--scratch-dir') + 1] = small
            self.refused(args, 2, words=(small, '--scratch-dir'))
        finally:
            subprocess.run(['umount', small], check=True)

    def test_second_concurrent_backup(self) -> None:
        first = self.start('--full')
        first.wait_started()
        # held still mid-backup, so that the second surely meets it
        first.proc.send_signal(signal.SIGSTOP)
        try:
            # the first's sidecar may still be writing its images
            self.run_refused(self.args(), 7, words=('locked',))
        finally:
            first.proc.send_signal(signal.SIGCONT)
        code, err = first.finish()
        self.assertEqual(code, 0, err)
        self.assertEqual(len(self.bucket.catalog(self.dom.name)['backups']),
                         1)


class TestLibvirtNoDisks(LibvirtTestCase):
    start_domain = False

    def setUp(self) -> None:
        super().setUp()
        self.dom.remove()
        self.dom = Domain(self.dir, with_disks=False)
        virsh('start', self.dom.name)

    def test_domain_without_disks(self) -> None:
        self.refused(self.args(), 4, words=('no writable disk',))


if __name__ == '__main__':
    unittest.main()
