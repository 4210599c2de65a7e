# `s3chain backup --kubevirt` of a pull-mode VirtualMachineBackup: a real
# libvirtd runs a real pull-mode backup of a TCG domain whose guest writes
# all the time (virt-launcher's part), the stand-in of KubeVirt's export
# server (kubevirt_export.py) serves its map and data over HTTPS, and the
# real binary streams them through our sidecar into the real radosgw:
# every point exact, restored to a block device and to a PVC's disk.img,
# and each fault of the export a clear line, its exit code, the catalog
# unchanged.
#
# Copyright (c) 2026 The s3chain authors
#
# SPDX-License-Identifier: GPL-2.0-or-later

import json
import os
import socket
import subprocess
import sys
import time
import unittest
from typing import Dict, List, Optional

from harness import Run
from libvirt_guest import DISKS, virsh
from test_libvirt import LibvirtTestCase

HERE = os.path.dirname(os.path.abspath(__file__))
# KubeVirt tracks changes of volumes with a qcow2 layer: the domain's
# qcow2 disk is the VM's volume (its raw one can keep no checkpoint)
VOLUMES = ['vda']
STAND_IN = os.path.join(HERE, 'kubevirt_export.py')
NAMESPACE = 'vms'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def make_ca(workdir: str, name: str) -> Dict[str, str]:
    """A CA and a certificate it signs for 127.0.0.1, as KubeVirt makes"""
    ca_key, ca = (os.path.join(workdir, f'{name}-ca.{x}')
                  for x in ('key', 'pem'))
    key, csr, cert = (os.path.join(workdir, f'{name}-server.{x}')
                      for x in ('key', 'csr', 'pem'))
    ext = os.path.join(workdir, f'{name}.ext')
    with open(ext, 'w') as f:
        f.write('subjectAltName=IP:127.0.0.1\n')
    quiet = {'check': True, 'capture_output': True}
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048',
                    '-nodes', '-keyout', ca_key, '-out', ca, '-days', '2',
                    '-subj', f'/CN={name} export CA'], **quiet)
    subprocess.run(['openssl', 'req', '-newkey', 'rsa:2048', '-nodes',
                    '-keyout', key, '-out', csr, '-subj',
                    '/CN=virt-export'], **quiet)
    subprocess.run(['openssl', 'x509', '-req', '-in', csr, '-CA', ca,
                    '-CAkey', ca_key, '-CAcreateserial', '-out', cert,
                    '-days', '2', '-extfile', ext], **quiet)
    return {'ca': ca, 'cert': cert, 'key': key}


class KubevirtTestCase(LibvirtTestCase):
    """The controller's part: a VirtualMachineBackup in Pull mode (a real
    libvirt pull backup with a checkpoint, and the export server's
    stand-in in front of it), its status and tracker as files, and
    `s3chain backup --kubevirt`"""
    backed_up = tuple(VOLUMES)

    def setUp(self) -> None:
        super().setUp()
        self.vm = f'{NAMESPACE}.{self.dom.name}'
        self.pki = make_ca(self.dir, 'kubevirt')
        # the token as the export server and as the data mover see it
        self.server_token = os.path.join(self.dir, 'server-token')
        self.token = os.path.join(self.dir, 'token')
        for path in (self.server_token, self.token):
            with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600),
                      'w') as f:
                f.write('s3cr3t-export-token\n')
        self.latest: Optional[str] = None    # the tracker's checkpoint
        self.count = 0
        self.server: Optional[subprocess.Popen] = None
        self.job = False

    def tearDown(self) -> None:
        self.end_backup()
        super().tearDown()

    def repo_vm(self) -> str:
        return self.vm

    def begin_backup(self, full: bool = False, **faults) -> None:
        """What KubeVirt does for a new VirtualMachineBackup in Pull mode:
        a libvirt pull backup (incremental from the tracker's checkpoint
        unless @full), with a checkpoint, exported over HTTPS"""
        self.count += 1
        self.checkpoint = f'vmb-{self.count}-{self.dom.name}'
        self.incremental = self.latest is not None and not full
        # QEMU's user makes the socket and the scratch files here
        scratch = os.path.join(self.dir, f'kv-scratch-{self.count}')
        os.makedirs(scratch, mode=0o777)
        os.chmod(scratch, 0o777)
        sock = os.path.join(scratch, 'nbd.sock')
        disks = ''
        for name in DISKS:
            if name not in VOLUMES:
                disks += f"<disk name='{name}' backup='no'/>"
                continue
            bitmap = f" exportbitmap='{self.latest}'" \
                if self.incremental else ''
            disks += (f"<disk name='{name}' backup='yes' type='file' "
                      f"exportname='{name}'{bitmap}><scratch file='"
                      f"{scratch}/{name}.qcow2'/></disk>")
        incr = f'<incremental>{self.latest}</incremental>' \
            if self.incremental else ''
        backup = (f"<domainbackup mode='pull'>{incr}<server "
                  f"transport='unix' socket='{sock}'/><disks>{disks}"
                  f"</disks></domainbackup>")
        cp = (f'<domaincheckpoint><name>{self.checkpoint}</name><disks>' +
              ''.join(f"<disk name='{n}' checkpoint='"
                      f"{'bitmap' if n in VOLUMES else 'no'}'/>"
                      for n in DISKS) + '</disks></domaincheckpoint>')
        bx, cx = (os.path.join(self.dir, f'{n}-{self.count}.xml')
                  for n in ('backup', 'checkpoint'))
        with open(bx, 'w') as f:
            f.write(backup)
        with open(cx, 'w') as f:
            f.write(cp)
        virsh('backup-begin', self.dom.name, bx, cx)
        self.job = True
        self.created = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())
        self.start_server(sock, **faults)

    def start_server(self, sock: str, **faults) -> None:
        self.port = free_port()
        args = [sys.executable, STAND_IN, '--port', str(self.port),
                '--cert', self.pki['cert'], '--key', self.pki['key'],
                '--token-file', self.server_token, '--socket', sock]
        for name in VOLUMES:
            args += ['--volume', f'{name}={name}']
        if self.incremental:
            args += ['--bitmap', self.latest]
        for name, value in faults.items():
            flag = '--' + name.replace('_', '-')
            args += [flag] if value is True else [flag, str(value)]
        self.server = subprocess.Popen(args, stdout=subprocess.PIPE,
                                       text=True)
        self.assertEqual(self.server.stdout.readline().strip(), 'ready')

    def end_backup(self, completed: bool = False) -> None:
        """The controller completes (or deletes) the VirtualMachineBackup:
        the export goes, libvirt's job ends, and only a completed one
        moves the tracker to its checkpoint"""
        if self.server:
            self.server.kill()
            self.server.wait()
            self.server = None
        if self.job:
            virsh('domjobabort', self.dom.name, check=False)
            self.job = False
            if completed:
                self.latest = self.checkpoint
            else:
                virsh('checkpoint-delete', self.dom.name, self.checkpoint,
                      check=False)

    def status(self, ca: Optional[str] = None) -> dict:
        base = f'https://127.0.0.1:{self.port}/exports'
        with open(ca or self.pki['ca']) as f:
            cert = f.read()
        return {
            'apiVersion': 'backup.kubevirt.io/v1alpha1',
            'kind': 'VirtualMachineBackup',
            'metadata': {'name': f'backup-{self.count}',
                         'namespace': NAMESPACE,
                         'creationTimestamp': self.created},
            'spec': {'source': {'apiGroup': 'kubevirt.io',
                                'kind': 'VirtualMachine',
                                'name': self.dom.name},
                     'mode': 'Pull', 'pvcName': 'scratch',
                     'tokenSecretRef': 'export-token'},
            'status': {
                'type': 'Incremental' if self.incremental else 'Full',
                'checkpointName': self.checkpoint,
                'endpointCert': cert,
                'includedVolumes': [
                    {'volumeName': n, 'mapEndpoint': f'{base}/{n}/map',
                     'dataEndpoint': f'{base}/{n}/data'} for n in VOLUMES],
                'conditions': [{'type': 'Progressing', 'status': 'True',
                                'reason': 'ExportReady'}],
            },
        }

    def tracker(self) -> dict:
        status = {'latestCheckpoint': {'name': self.latest}} \
            if self.latest else {}
        return {'apiVersion': 'backup.kubevirt.io/v1alpha1',
                'kind': 'VirtualMachineBackupTracker',
                'metadata': {'name': 'tracker', 'namespace': NAMESPACE},
                'spec': {'source': {'apiGroup': 'kubevirt.io',
                                    'kind': 'VirtualMachine',
                                    'name': self.dom.name}},
                'status': status}

    def write(self, name: str, obj: dict) -> str:
        path = os.path.join(self.dir, name)
        with open(path, 'w') as f:
            json.dump(obj, f)
        return path

    def args(self, *extra: str, status: Optional[dict] = None) -> List[str]:
        return ['backup', '--kubevirt',
                self.write('vmbackup.json', status or self.status()),
                '--kubevirt-tracker', self.write('tracker.json',
                                                 self.tracker()),
                '--export-token-file', self.token,
                '--repo', self.bucket.repo, '--runtime-dir', self.runtime,
                '--json', *extra]

    def kubevirt_backup(self, full: bool = False) -> dict:
        self.begin_backup(full)
        result = self.backup()
        self.end_backup(completed=True)
        return result

    def refused_export(self, code: int, words=(), ca: Optional[str] = None,
                       full: bool = False, **faults) -> str:
        """A backup the export's fault (or a CA of @ca) fails: one line,
        @code, nothing committed"""
        catalog = self.bucket.objects()
        self.begin_backup(full, **faults)
        try:
            err = self.run_refused(self.args(status=self.status(ca=ca)),
                                   code, words=words)
        finally:
            self.end_backup()
        self.assertEqual({k: v for k, v in self.bucket.objects().items()
                          if k.endswith('catalog.json')},
                         {k: v for k, v in catalog.items()
                          if k.endswith('catalog.json')})
        return err


class TestKubevirtChain(KubevirtTestCase):
    def test_full_then_incrementals_while_the_guest_writes(self) -> None:
        results = [self.kubevirt_backup()]
        self.assertEqual(self.types(results[0])['vda'][0], 'full')
        for _ in range(2):
            self.assertGuestWrites()
            result = self.kubevirt_backup()
            self.assertEqual(self.types(result)['vda'][0], 'incremental',
                             result)
            self.assertEqual(result['disks'][0]['parent'],
                             results[-1]['backup'])
            results.append(result)
        for result in results:
            self.assertExact(result)
        listed = json.loads(Run(['list', '--repo', self.bucket.repo,
                                 '--vm', self.vm, '--json'],
                                self.env()).proc.communicate()[0]
                            .splitlines()[-1])
        # the catalog names KubeVirt's checkpoint of each backup, for the
        # controller to choose the tracker or a full backup
        self.assertEqual(results[-1]['disks'][0]['checkpoint'],
                         self.latest)
        [vm] = listed['vms']
        self.assertEqual(vm['vm'], self.vm)
        self.assertEqual(vm['backups'][-1]['disks'][0]['checkpoint'],
                         self.latest)
        self.assertEqual(vm['backups'][-1]['source'], 'kubevirt')
        self.assertGuestWrites()
        self.assertUntainted()

    def test_restore_into_a_block_device_and_a_disk_img(self) -> None:
        """A DataDownload's PVCs: in block mode, a device; in filesystem
        mode, disk.img in the mounted volume"""
        self.kubevirt_backup()
        self.assertGuestWrites()
        result = self.kubevirt_backup()
        backing = os.path.join(self.dir, 'pvc-block.img')
        with open(backing, 'wb') as f:
            f.truncate(DISKS['vda'][1])
        loop = subprocess.run(['losetup', '--find', '--show', backing],
                              check=True, capture_output=True,
                              text=True).stdout.strip()
        try:
            self.assertExact(result, {'vda': loop})
        finally:
            subprocess.run(['losetup', '-d', loop], check=False)
        pvc = os.path.join(self.dir, 'pvc-fs')
        os.mkdir(pvc)
        self.assertExact(result, {'vda': os.path.join(pvc, 'disk.img')})


class TestKubevirtRefusals(KubevirtTestCase):
    def test_incremental_without_a_matching_parent(self) -> None:
        self.kubevirt_backup()
        # another tool's backup moved the tracker on
        self.begin_backup()
        self.end_backup(completed=True)
        err = self.refused_export(2, ('Incremental', 'forceFullBackup'))
        self.assertIn('follows checkpoint vmb-1-', err)

    def test_full_when_kubevirt_forces_it(self) -> None:
        self.kubevirt_backup()
        self.assertGuestWrites()
        result = self.kubevirt_backup(full=True)
        self.assertEqual(self.types(result)['vda'],
                         ('full', f'VirtualMachineBackup {NAMESPACE}/'
                                  f'backup-2 is Full'))
        self.assertExact(result)

    def test_push_mode_and_bad_files(self) -> None:
        self.begin_backup()
        status = self.status()
        status['spec']['mode'] = 'Push'
        self.run_refused(self.args(status=status), 2, words=('Pull',))
        status = self.status()
        del status['status']['includedVolumes']
        self.run_refused(self.args(status=status), 2,
                         words=('includedVolumes',))
        status = self.status()
        status['status']['includedVolumes'][0]['volumeName'] = '../x'
        self.run_refused(self.args(status=status), 2,
                         words=('volumeName',))
        path = self.write('garbage.json', {})
        with open(path, 'w') as f:
            f.write('{"kind": "VirtualMachineBackup", "spec": [1, ')
        args = self.args()
        args[args.index('--kubevirt') + 1] = path
        self.run_refused(args, 2, words=('JSON',))
        os.chmod(self.token, 0o644)
        self.run_refused(self.args(), 2, words=('chmod 600',))
        self.assertEqual(self.bucket.objects(), {})


class TestKubevirtFaults(KubevirtTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.first = self.kubevirt_backup()

    def assertNextFollows(self) -> None:
        """After the fault, the next backup follows the last committed
        one, and is the guest's disk at its instant"""
        result = self.kubevirt_backup()
        self.assertEqual(self.types(result)['vda'][0], 'incremental')
        self.assertEqual(result['disks'][0]['parent'], self.first['backup'])
        self.assertExact(result)

    def test_export_server_dies_mid_stream(self) -> None:
        # a full copy: more than the guest's few MiB of changes
        self.refused_export(8, ('data at offset', 'export server'),
                            full=True, die_after=4 << 20)
        self.assertNextFollows()

    def test_503s_are_retried(self) -> None:
        self.begin_backup(full=True, fail_data=3)
        result = self.backup()
        self.end_backup(completed=True)
        self.assertExact(result)

    def test_wrong_token(self) -> None:
        with open(self.token, 'w') as f:
            f.write('another-token\n')
        self.refused_export(5, ('refused the token', 'HTTP 401'))
        with open(self.token, 'w') as f:
            f.write('s3cr3t-export-token\n')
        self.assertNextFollows()

    def test_expired_export(self) -> None:
        self.refused_export(4, ('HTTP 410', 'ttlDuration'), gone=True)
        self.assertNextFollows()

    def test_ca_mismatch(self) -> None:
        other = make_ca(self.dir, 'other')
        self.refused_export(2, ('TLS', 'endpointCert'), ca=other['ca'])
        self.assertNextFollows()

    def test_page_ends_early(self) -> None:
        self.refused_export(11, ('map page', 'next page'),
                            page_ends_early=True)
        self.assertNextFollows()

    def test_extent_past_the_disks_end(self) -> None:
        self.refused_export(11, ("past the disk's end",),
                            extent_past_end=True)
        self.assertNextFollows()


if __name__ == '__main__':
    unittest.main()
