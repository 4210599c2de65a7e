#!/usr/bin/env python3
"""Backups through KubeVirt's pull-mode export endpoints, against their
baselines, in the same run and to the same radosgw:

- full: `s3chain backup --kubevirt` of a disk full of data (4 GiB, or
  S3CHAIN_BENCH_GIB), read through the export server's map and data
  endpoints (the tests' stand-in of virt-exportserver,
  kubevirt_export.py, in front of a real libvirt pull backup), against
  one `curl` of the data endpoint into a file (a single stream, as
  KubeVirt's published NBD pull figure is), and against s3chain over
  QMP on a plain QEMU with a copy of the disk;
- incremental, 64 MiB and 1 GiB dirty: against OADP's push pipeline, a
  libvirt push-mode backup into a local qcow2 (KubeVirt's Push mode
  writes it onto a PVC) and then that file uploaded whole (boto3, 8 MiB
  parts, 8 threads).

The changes are made with the domain off, by qemu-io on its qcow2 (the
persistent bitmaps of both tools' checkpoints record them); the guest is
paused while the backups are measured, so that each tool's incremental
holds the same changes.  Reports wall time, bytes uploaded, local bytes,
the command's and the sidecar's peak RSS, and the CPU seconds of the
command (curl or s3chain) and of the export server's stand-in.
Usage: kubevirt-backup.py ENV_FILE WORKDIR PREFIX DIRTY_MIB...
"""

# SPDX-License-Identifier: GPL-2.0-or-later
import json
import os
import random
import socket
import subprocess
import sys
import time
import uuid

from vmbench import (GiB, MiB, QEMU_IMG, REPO, S3CHAIN, BucketBench,
                     define_domain, dirty_image, start_vm)

# S3CHAIN_BENCH_GIB: the disk's size (4 GiB unless set)
SIZE = int(os.environ.get('S3CHAIN_BENCH_GIB', '4')) * GiB
URI = 'qemu:///system'
STAND_IN = os.path.join(REPO, 'tests', 'orchestrator', 'kubevirt_export.py')
TOKEN = 'bench-export-token'


def virsh(*args, capture=False):
    res = subprocess.run(['virsh', '-q', '-c', URI, *args], check=True,
                         capture_output=True, text=True)
    return res.stdout if capture else None


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class Bench(BucketBench):
    def __init__(self, env_file, work, prefix):
        super().__init__(env_file, work, prefix)
        self.domain = f'bench-kubevirt-{uuid.uuid4().hex[:8]}'
        self.images = {t: os.path.join(work, f'{t}.qcow2')
                       for t in ('kubevirt', 'qmp')}
        self.vm = None
        self.server = None
        self.latest = {'kubevirt': None, 'oadp': None}
        self.count = 0
        self.rnd = random.Random(7)

    def make_image(self):
        raw = os.path.join(self.work, 'base.raw')
        with open(raw, 'wb') as f:
            for _ in range(SIZE // (16 * MiB)):
                f.write(os.urandom(16 * MiB))
        for path in self.images.values():
            subprocess.run([QEMU_IMG, 'convert', '-q', '-O', 'qcow2', raw,
                            path], check=True)
            os.chmod(path, 0o666)
        os.remove(raw)
        os.chmod(self.work, 0o755)

    def make_pki(self):
        self.ca = os.path.join(self.work, 'ca.pem')
        key = os.path.join(self.work, 'ca.key')
        self.cert = os.path.join(self.work, 'server.pem')
        self.key = os.path.join(self.work, 'server.key')
        csr = os.path.join(self.work, 'server.csr')
        ext = os.path.join(self.work, 'san.ext')
        with open(ext, 'w', encoding='ascii') as f:
            f.write('subjectAltName=IP:127.0.0.1\n')
        quiet = {'check': True, 'capture_output': True}
        subprocess.run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048',
                        '-nodes', '-keyout', key, '-out', self.ca, '-days',
                        '2', '-subj', '/CN=bench CA'], **quiet)
        subprocess.run(['openssl', 'req', '-newkey', 'rsa:2048', '-nodes',
                        '-keyout', self.key, '-out', csr, '-subj',
                        '/CN=export'], **quiet)
        subprocess.run(['openssl', 'x509', '-req', '-in', csr, '-CA',
                        self.ca, '-CAkey', key, '-CAcreateserial', '-out',
                        self.cert, '-days', '2', '-extfile', ext], **quiet)
        self.token = os.path.join(self.work, 'token')
        with open(os.open(self.token, os.O_WRONLY | os.O_CREAT, 0o600),
                  'w', encoding='ascii') as f:
            f.write(TOKEN + '\n')
        self.header = os.path.join(self.work, 'header')
        with open(os.open(self.header, os.O_WRONLY | os.O_CREAT, 0o600),
                  'w', encoding='ascii') as f:
            f.write(f'x-kubevirt-export-token: {TOKEN}\n')

    # KubeVirt's part: a pull-mode VirtualMachineBackup, exported

    def begin_pull(self):
        self.count += 1
        base = self.latest['kubevirt']
        self.checkpoint = f'vmb-{self.count}'
        scratch = os.path.join(self.work, f'scratch-{self.count}')
        os.makedirs(scratch, mode=0o777, exist_ok=True)
        os.chmod(scratch, 0o777)
        sock = os.path.join(scratch, 'nbd.sock')
        bitmap = f" exportbitmap='{base}'" if base else ''
        incr = f'<incremental>{base}</incremental>' if base else ''
        self.backup_xml(
            f"<domainbackup mode='pull'>{incr}<server transport='unix' "
            f"socket='{sock}'/><disks><disk name='vda' backup='yes' "
            f"type='file' exportname='vda'{bitmap}><scratch file='"
            f"{scratch}/vda.qcow2'/></disk><disk name='vdb' backup='no'/>"
            f"</disks></domainbackup>", self.checkpoint)
        self.port = free_port()
        args = [sys.executable, STAND_IN, '--port', str(self.port),
                '--cert', self.cert, '--key', self.key, '--token-file',
                self.token, '--socket', sock, '--volume', 'vda=vda']
        if base:
            args += ['--bitmap', base]
        self.server = subprocess.Popen(args, stdout=subprocess.PIPE,
                                       text=True)
        assert self.server.stdout.readline().strip() == 'ready'
        url = f'https://127.0.0.1:{self.port}/exports/vda'
        with open(self.ca, encoding='ascii') as f:
            cert = f.read()
        status = {
            'apiVersion': 'backup.kubevirt.io/v1alpha1',
            'kind': 'VirtualMachineBackup',
            'metadata': {'name': f'bench-{self.count}', 'namespace': 'vms'},
            'spec': {'source': {'apiGroup': 'kubevirt.io',
                                'kind': 'VirtualMachine', 'name': 'bench'},
                     'mode': 'Pull'},
            'status': {'type': 'Incremental' if base else 'Full',
                       'checkpointName': self.checkpoint,
                       'endpointCert': cert,
                       'includedVolumes': [{
                           'volumeName': 'vda', 'mapEndpoint': f'{url}/map',
                           'dataEndpoint': f'{url}/data'}]}}
        tracker = {'apiVersion': 'backup.kubevirt.io/v1alpha1',
                   'kind': 'VirtualMachineBackupTracker',
                   'metadata': {'name': 'bench', 'namespace': 'vms'},
                   'spec': {'source': {'apiGroup': 'kubevirt.io',
                                       'kind': 'VirtualMachine',
                                       'name': 'bench'}},
                   'status': {'latestCheckpoint': {'name': base}}
                   if base else {}}
        self.files = []
        for name, obj in (('vmbackup.json', status),
                          ('tracker.json', tracker)):
            path = os.path.join(self.work, name)
            with open(path, 'w', encoding='ascii') as f:
                json.dump(obj, f)
            self.files.append(path)
        return f'{url}/data'

    def backup_xml(self, backup, checkpoint):
        bx = os.path.join(self.work, 'backup.xml')
        cx = os.path.join(self.work, 'checkpoint.xml')
        with open(bx, 'w', encoding='ascii') as f:
            f.write(backup)
        with open(cx, 'w', encoding='ascii') as f:
            f.write(f"<domaincheckpoint><name>{checkpoint}</name><disks>"
                    "<disk name='vda' checkpoint='bitmap'/><disk "
                    "name='vdb' checkpoint='no'/></disks>"
                    "</domaincheckpoint>")
        virsh('backup-begin', self.domain, bx, cx)

    def stop_server(self):
        """Stops the stand-in; returns the CPU seconds it used"""
        with open(f'/proc/{self.server.pid}/stat', encoding='ascii') as f:
            fields = f.read().rsplit(')', 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')
        self.server.kill()
        self.server.wait()
        self.server = None
        return cpu

    def end_pull(self):
        self.server_cpu = self.stop_server()
        virsh('domjobabort', self.domain)
        self.latest['kubevirt'] = self.checkpoint

    def s3chain(self, source_args, repo):
        """A backup through a sidecar of its own: time, result, the
        command's and the sidecar's peak RSS, the command's CPU seconds"""
        runtime, qmp = self.start_sidecar()
        start = time.monotonic()
        proc = subprocess.Popen(
            [S3CHAIN, 'backup', *source_args, '--repo', repo,
             '--sidecar-qmp', qmp, '--runtime-dir', runtime, '--json',
             '--progress', 'none'], env=self.proc_env,
            stdout=subprocess.PIPE, text=True)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        took = time.monotonic() - start
        if os.waitstatus_to_exitcode(status):
            sys.exit(f's3chain backup failed: {out}')
        rss = self.sidecar_peak_rss()
        self.stop_sidecar()
        if os.path.exists(qmp):
            os.remove(qmp)
        return (took, json.loads(out.splitlines()[-1]),
                usage.ru_maxrss * 1024, rss, usage.ru_utime + usage.ru_stime)

    def kubevirt(self, repo):
        self.begin_pull()
        res = self.s3chain(['--kubevirt', self.files[0],
                            '--kubevirt-tracker', self.files[1],
                            '--export-token-file', self.token], repo)
        self.end_pull()
        return res

    def curl(self):
        """One stream of the whole data endpoint into a local file"""
        data = self.begin_pull()
        out = os.path.join(self.work, 'curl.out')
        start = time.monotonic()
        proc = subprocess.Popen(['curl', '-sS', '--fail', '--cacert',
                                 self.ca, '-H', f'@{self.header}', '-o', out,
                                 f'{data}?offset=0&length={SIZE}'])
        _, status, usage = os.wait4(proc.pid, 0)
        took = time.monotonic() - start
        assert os.waitstatus_to_exitcode(status) == 0
        size = os.path.getsize(out)
        os.remove(out)
        self.server_cpu = self.stop_server()
        virsh('domjobabort', self.domain)
        virsh('checkpoint-delete', self.domain, self.checkpoint)
        self.count -= 1
        assert size == SIZE, size
        return took, usage.ru_utime + usage.ru_stime

    def oadp_push(self, key):
        """KubeVirt's Push mode and OADP's upload: a libvirt push backup
        into a local qcow2, then the file uploaded whole"""
        base = self.latest['oadp']
        name = f'oadp-{self.count}'
        # QEMU's user writes it
        pvc = os.path.join(self.work, 'oadp-pvc')
        os.makedirs(pvc, mode=0o777, exist_ok=True)
        os.chmod(pvc, 0o777)
        target = os.path.join(pvc, 'vda.qcow2')
        incr = f'<incremental>{base}</incremental>' if base else ''
        start = time.monotonic()
        self.backup_xml(
            f"<domainbackup>{incr}<disks><disk name='vda' backup='yes' "
            f"type='file'><target file='{target}'/><driver type='qcow2'/>"
            f"</disk><disk name='vdb' backup='no'/></disks>"
            f"</domainbackup>", name)
        while 'None' not in (virsh('domjobinfo', self.domain,
                                   capture=True) or 'None'):
            time.sleep(0.2)
        local = os.path.getsize(target)
        self.upload(target, key)
        took = time.monotonic() - start
        os.remove(target)
        self.latest['oadp'] = name
        return took, local

    def run(self, dirty_mibs):
        self.make_pki()
        self.make_image()
        define_domain(self.work, self.domain, self.images['kubevirt'])
        virsh('start', self.domain)
        self.vm = start_vm(self.work, self.images['qmp'], 'qcow2')
        time.sleep(3)
        # paused while measured, so that each tool's incremental holds
        # the same changes (the tests back up guests that write)
        virsh('suspend', self.domain)
        base = f'{self.prefix}/kubevirt-backup'
        kv_repo = f's3://{self.bucket}/{base}/kubevirt'
        qmp_repo = f's3://{self.bucket}/{base}/qmp'
        qmp_args = ['--vm', 'bench', '--qmp', f'{self.work}/vm.qmp']

        curl_s, curl_cpu = self.curl()
        curl_server = self.server_cpu
        kv_s, kv, kv_rss, kv_sc, kv_cpu = self.kubevirt(kv_repo)
        kv_server = self.server_cpu
        q_s, q, _, q_sc, q_cpu = self.s3chain(qmp_args, qmp_repo)
        push_s, push_local = self.oadp_push(f'{base}/oadp/full.qcow2')
        full = f'full {SIZE // GiB} GiB'
        print(f'{"backup":<22} {"tool":<34} {"wall s":>7} {"MB/s":>6} '
              f'{"uploaded MiB":>12} {"local MiB":>9} {"cmd RSS":>7} '
              f'{"sidecar RSS":>11} {"cmd CPU s":>9} {"export CPU s":>12}')

        def row(what, tool, secs, up, local, rss=None, sc=None, cpu=None,
                server=None, moved=None):
            rate = (moved if moved is not None else up) / secs / 1e6
            print(f'{what:<22} {tool:<34} {secs:>7.2f} {rate:>6.0f} '
                  f'{up / MiB:>12.1f} {local / MiB:>9.1f} '
                  f'{"-" if rss is None else f"{rss / MiB:.0f}":>7} '
                  f'{"-" if sc is None else f"{sc / MiB:.0f}":>11} '
                  f'{"-" if cpu is None else f"{cpu:.1f}":>9} '
                  f'{"-" if server is None else f"{server:.1f}":>12}',
                  flush=True)

        row(full, 'curl of the data endpoint, 1 stream', curl_s, 0,
            SIZE, cpu=curl_cpu, server=curl_server, moved=SIZE)
        row(full, 's3chain --kubevirt', kv_s,
            kv['disks'][0]['bytes-stored'], 0, kv_rss, kv_sc, kv_cpu,
            kv_server)
        row(full, 's3chain over QMP', q_s,
            q['disks'][0]['bytes-stored'], 0, sc=q_sc, cpu=q_cpu)
        row(full, 'push qcow2 + upload (OADP)', push_s, push_local,
            push_local)
        ratios = [f'{full}: curl / s3chain --kubevirt = '
                  f'{curl_s / kv_s:.2f}, '
                  f'QMP / --kubevirt = {q_s / kv_s:.2f}, push + upload / '
                  f'--kubevirt = {push_s / kv_s:.2f}']
        for mib in dirty_mibs:
            seed = self.rnd.randrange(1 << 30)
            virsh('destroy', self.domain)
            dirty_image(self.images['kubevirt'], SIZE, mib * MiB, seed)
            virsh('start', self.domain)
            time.sleep(3)
            virsh('suspend', self.domain)
            kv_s, kv, kv_rss, kv_sc, kv_cpu = self.kubevirt(kv_repo)
            kv_server = self.server_cpu
            push_s, push_local = self.oadp_push(f'{base}/oadp/{mib}.qcow2')
            what = f'incremental {mib} MiB'
            row(what, 's3chain --kubevirt', kv_s,
                kv['disks'][0]['bytes-stored'], 0, kv_rss, kv_sc, kv_cpu,
                kv_server)
            row(what, 'push qcow2 + upload (OADP)', push_s, push_local,
                push_local)
            ratios.append(f'{mib} MiB dirty: push + upload / s3chain '
                          f'--kubevirt = {push_s / kv_s:.2f}')
        print()
        print('\n'.join(ratios))

    def close(self):
        if self.server:
            self.server.kill()
        if self.vm:
            self.vm.shutdown()
        subprocess.run(['virsh', '-q', '-c', URI, 'destroy', self.domain],
                       check=False, capture_output=True)
        subprocess.run(['virsh', '-q', '-c', URI, 'undefine', self.domain,
                        '--checkpoints-metadata'], check=False,
                       capture_output=True)


def main():
    env_file, work, prefix = sys.argv[1:4]
    bench = Bench(env_file, work, prefix)
    try:
        bench.run([int(m) for m in sys.argv[4:]])
    finally:
        bench.close()


if __name__ == '__main__':
    main()
