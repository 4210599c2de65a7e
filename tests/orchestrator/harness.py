# Real parts for the s3chain command's tests: the bucket of the local
# radosgw (S3CHAIN_TEST_ENV), a stock qemu-system VM with two disks whose
# "guest" is HMP's qemu-io, our qemu-storage-daemon as the sidecar, and
# the s3chain binary itself.
#
# Copyright (c) 2026 The s3chain authors
#
# SPDX-License-Identifier: GPL-2.0-or-later

import collections
import contextlib
import hashlib
import http.client
import http.server
import json
import mmap
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import uuid
from typing import Dict, Iterator, List, Optional, Tuple, Union

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
BUILD = os.environ.get('S3CHAIN_BUILD', os.path.join(REPO, 'build'))
sys.path.insert(0, os.path.join(BUILD, 'qemu-src', 'python'))
sys.path.insert(0, os.path.join(REPO, 'scripts'))

# pylint: disable=wrong-import-position
import s3obj  # noqa: E402
from qemu.machine import QEMUMachine  # noqa: E402

# S3CHAIN_BIN: another build of the command (build/fuzz's, sanitised)
S3CHAIN = os.environ.get('S3CHAIN_BIN',
                         os.path.join(BUILD, 'orchestrator', 's3chain'))
# S3CHAIN_QEMU_BUILD: another build of QEMU's tools (build/qemu-sanitised)
QEMU_TOOLS = os.environ.get('S3CHAIN_QEMU_BUILD', os.path.join(BUILD, 'qemu'))
QEMU_IMG = os.path.join(QEMU_TOOLS, 'qemu-img')
# What reads the VMs' local qcow2 disks for the tests' view of them: the
# plain build's, as that reading tests none of s3chain
LOCAL_QEMU_IMG = os.path.join(BUILD, 'qemu', 'qemu-img')
QSD = os.path.join(QEMU_TOOLS, 'storage-daemon', 'qemu-storage-daemon')
SIDECAR = os.path.join(REPO, 'qsd-config', 's3chain-sidecar')
STOCK_QEMU = os.environ.get('S3CHAIN_STOCK_QEMU',
                            '/usr/bin/qemu-system-x86_64')
MiB = 1024 * 1024

DISKS = {'vd0': 128 * MiB, 'vd1': 64 * MiB}

# Where the tests' raw copies of disks go: tmpfs where there is one, as
# writing them to disk and reading them back took as long as the backups
# that they check
SCRATCH = '/dev/shm' if os.access('/dev/shm', os.W_OK) else None


def file_digest(path: str) -> str:
    """The SHA-256 of a file's bytes, hashed through a mapping: reading a
    disk's worth into a new bytes object costs more in page faults than
    hashing it"""
    with open(path, 'rb') as f:
        if os.fstat(f.fileno()).st_size == 0:
            return hashlib.sha256().hexdigest()
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def scratch_raw(prefix: str) -> Iterator[str]:
    """The path of a new raw file in SCRATCH, removed afterwards"""
    fd, raw = tempfile.mkstemp(prefix=prefix, suffix='.raw', dir=SCRATCH)
    os.close(fd)
    try:
        yield raw
    finally:
        os.remove(raw)


def command_env(bucket: 'Bucket', **extra: str) -> Dict[str, str]:
    """The environment of an s3chain run: the bucket's keys, our build"""
    env = {k: v for k, v in os.environ.items() if not k.startswith('AWS_')}
    env.update({
        'AWS_ACCESS_KEY_ID': bucket.env['AWS_ACCESS_KEY_ID'],
        'AWS_SECRET_ACCESS_KEY': bucket.env['AWS_SECRET_ACCESS_KEY'],
        'AWS_ENDPOINT_URL': bucket.endpoint,
        'S3CHAIN_QSD': QSD,
        'S3CHAIN_SIDECAR': SIDECAR,
        'S3CHAIN_QEMU_IMG': QEMU_IMG,
    })
    env.update(extra)
    return env


def load_env() -> Dict[str, str]:
    return s3obj.load_env(os.environ.get('S3CHAIN_TEST_ENV',
                                         '/tmp/s3chain-s3/s3.env'))


class Bucket:
    """The bucket under test, with a prefix of this test's own"""

    def __init__(self) -> None:
        self.env = load_env()
        self.endpoint = self.env['S3CHAIN_ENDPOINT']
        self.name = self.env['S3CHAIN_BUCKET']
        self.prefix = f'cli-tests/{uuid.uuid4().hex[:12]}'
        self.repo = f's3://{self.name}/{self.prefix}'
        self.client = s3obj.client(self.env)

    def objects(self) -> Dict[str, str]:
        """Every object under the prefix, with its ETag"""
        out = {}
        pages = self.client.get_paginator('list_objects_v2').paginate(
            Bucket=self.name, Prefix=self.prefix + '/')
        for page in pages:
            for obj in page.get('Contents', []):
                out[obj['Key']] = obj['ETag']
        return out

    def catalog(self, vm: str = 'vm1') -> Optional[dict]:
        key = f'{self.prefix}/s3chain/vms/{vm}/catalog.json'
        try:
            body = self.client.get_object(Bucket=self.name, Key=key)['Body']
        except self.client.exceptions.NoSuchKey:
            return None
        return json.loads(body.read())

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.name,
                                      Key=key)['Body'].read()

    def put(self, key: str, body: bytes) -> None:
        self.client.put_object(Bucket=self.name, Key=key, Body=body)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.name, Key=key)

    def cleanup(self) -> None:
        for key in self.objects():
            self.client.delete_object(Bucket=self.name, Key=key)

    def radosgw(self, action: str) -> None:
        # the server this env file names (a run may have two)
        subprocess.run([self.env['S3CHAIN_S3_CTL'], f'rgw-{action}'],
                       check=True, stdout=subprocess.DEVNULL,
                       env=dict(os.environ,
                                S3CHAIN_S3_DIR=self.env['S3CHAIN_S3_DIR']))


class VM:
    """A stock qemu-system with two qcow2 disks full of data, no guest"""

    def __init__(self, workdir: str) -> None:
        self.dir = workdir
        self.qmp_socket = os.path.join(workdir, 'vm.qmp')
        args = ['-nodefaults', '-display', 'none', '-accel', 'tcg',
                '-qmp', f'unix:{self.qmp_socket},server=on,wait=off',
                '-device', 'virtio-scsi-pci,id=scsi0']
        for i, (name, size) in enumerate(DISKS.items()):
            path = os.path.join(workdir, f'{name}.qcow2')
            subprocess.run([QEMU_IMG, 'create', '-q', '-f', 'qcow2', path,
                            str(size)], check=True)
            args += ['-blockdev', f'driver=qcow2,node-name=disk{i},'
                                  f'file.driver=file,file.filename={path}',
                     '-device', f'scsi-hd,id={name},drive=disk{i},'
                                f'serial=SERIAL-{name}']
        self.machine = QEMUMachine(STOCK_QEMU, args=args,
                                   base_temp_dir=workdir)
        self.machine.launch()
        self.lock = threading.Lock()
        for name, size in DISKS.items():
            # data all over, with holes, so that backups have work to do
            for off in range(0, size, 8 * MiB):
                self.write(name, f'-P {(off // MiB) % 250 + 1} {off} 5M')

    def cmd(self, command: str, **args):
        """A QMP command; the guest writer's thread shares the monitor"""
        with self.lock:
            return self.machine.cmd(command, **args)

    def hmp(self, line: str) -> str:
        return self.cmd('human-monitor-command', command_line=line)

    def write(self, disk: str, args: str) -> float:
        """A guest write; returns how long it took"""
        start = time.monotonic()
        out = self.hmp(f'qemu-io -d {disk} "write {args}"')
        took = time.monotonic() - start
        if 'failed' in out or 'rror' in out:
            raise AssertionError(f'guest write {args} to {disk}: {out}')
        return took

    def disk_bytes(self, disk: str) -> bytes:
        """The guest's view of the disk now"""
        with self.disk_copy(disk) as raw, open(raw, 'rb') as f:
            return f.read()

    def disk_digest(self, disk: str) -> str:
        """The SHA-256 of the guest's view of the disk now"""
        with self.disk_copy(disk) as raw:
            return file_digest(raw)

    @contextlib.contextmanager
    def disk_copy(self, disk: str) -> Iterator[str]:
        """A raw file holding the guest's view of the disk now"""
        self.hmp(f'qemu-io -d {disk} "flush"')
        with scratch_raw(f's3chain-{disk}-') as raw:
            subprocess.run([LOCAL_QEMU_IMG, 'convert', '-U', '-O', 'raw',
                            os.path.join(self.dir, f'{disk}.qcow2'), raw],
                           check=True)
            yield raw

    def graph(self) -> List[Tuple[str, str]]:
        """What a user checks of the block graph: each node and driver"""
        nodes = self.cmd('query-named-block-nodes', flat=True)
        return sorted((n['node-name'], n['drv']) for n in nodes)

    def devices(self) -> Dict[str, str]:
        return {b['qdev']: b['inserted']['node-name']
                for b in self.cmd('query-block')}

    def bitmaps(self, node: str = 'disk0') -> List[str]:
        for n in self.cmd('query-named-block-nodes', flat=True):
            if n['node-name'] == node:
                return sorted(b['name'] for b in n.get('dirty-bitmaps', []))
        return []

    def running(self) -> bool:
        return self.cmd('query-status')['status'] == 'running'

    def shutdown(self) -> None:
        try:
            self.machine.shutdown()
        except Exception:  # pylint: disable=broad-except
            # a VM that a test killed ends abnormally, as it should
            if self.machine.exitcode() is None:
                raise


class GuestWriter(threading.Thread):
    """Keeps the guest writing all over its disks, timing every write"""

    def __init__(self, vm: VM) -> None:
        super().__init__(daemon=True)
        self.vm = vm
        self.stop = threading.Event()
        self.latencies: List[float] = []
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        n = 0
        try:
            while not self.stop.is_set():
                for name, size in DISKS.items():
                    off = (n * 3 * MiB + 64 * 1024) % (size - MiB)
                    self.latencies.append(
                        self.vm.write(name, f'-P {n % 200 + 50} {off} 256k'))
                n += 1
                time.sleep(0.02)
        except BaseException as e:  # pylint: disable=broad-except
            self.error = e

    def finish(self) -> None:
        self.stop.set()
        self.join()


class FaultProxy:
    """Forwards every request to the S3 server, but answers those that
    refuses() picks with its status and S3 error code, counting them, and
    holds each request for the seconds that holds() says first; counts
    requests by method"""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.split('://', 1)[1]
        self.refused = 0
        self.methods: collections.Counter = collections.Counter()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'

            def log_message(self, *args) -> None:
                pass

            def forward(self) -> None:
                length = int(self.headers.get('Content-Length') or 0)
                body = self.rfile.read(length) if length else None
                headers = dict(self.headers.items())
                time.sleep(proxy.holds(self.command))
                proxy.methods[self.command] += 1
                refusal = proxy.refuses(self.command, self.headers)
                if refusal:
                    proxy.refused += 1
                    self.answer(refusal[0], [], refusal[2] if len(refusal) > 2
                                else ('<?xml version="1.0"?><Error><Code>'
                                      f'{refusal[1]}</Code></Error>').encode())
                    return
                conn = http.client.HTTPConnection(proxy.upstream, timeout=60)
                conn.request(self.command, self.path, body=body,
                             headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                self.answer(resp.status, resp.getheaders(), data)

            def answer(self, status: int, headers, data: bytes) -> None:
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in ('connection', 'keep-alive',
                                            'transfer-encoding',
                                            'content-length', 'date',
                                            'server'):
                        self.send_header(name, value)
                self.send_header('Content-Length', str(len(data)))
                self.end_headers()
                if self.command != 'HEAD':
                    self.wfile.write(data)

            do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = forward

        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0),
                                                     Handler)
        self.httpd.daemon_threads = True
        self.endpoint = f'http://127.0.0.1:{self.httpd.server_port}'
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def refuses(self, method: str, headers) -> Optional[tuple]:
        """(status, S3 error code[, the whole body]) to answer instead, or
        None"""
        return None

    def holds(self, method: str) -> float:
        """Seconds to wait before a request goes on"""
        return 0

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Run:
    """One s3chain process, its JSON lines read as they come"""

    def __init__(self, args: List[str], env: Dict[str, str],
                 wrapper: Optional[List[str]] = None) -> None:
        self.proc = subprocess.Popen((wrapper or []) + [S3CHAIN] + args,
                                     env=env,
                                     stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.events: List[dict] = []
        self.stdout = ''

    def wait_event(self, name: str) -> dict:
        for line in self.proc.stdout:
            self.stdout += line
            event = json.loads(line)
            self.events.append(event)
            if event.get('event') == name:
                return event
        raise AssertionError(f'no {name} line: ' + self.finish()[1])

    def wait_started(self) -> dict:
        return self.wait_event('started')

    def finish(self) -> Tuple[int, str]:
        out, err = self.proc.communicate(timeout=600)
        self.stdout += out
        for line in out.splitlines():
            self.events.append(json.loads(line))
        return self.proc.returncode, err

    def result(self) -> dict:
        return [e for e in self.events if e.get('event') == 'result'][-1]


class CommandRuns:
    """Runs of `s3chain backup` with the arguments of the class's args()"""

    def start(self, *extra: str, env: Optional[Dict[str, str]] = None) -> Run:
        return Run(self.args(*extra), env or self.env())

    def backup(self, *extra: str) -> dict:
        run = self.start(*extra)
        code, err = run.finish()
        self.assertEqual(code, 0, err)
        return run.result()

    def run_refused(self, argv: List[str], code: int, env=None,
                    words=()) -> str:
        """A run that must fail with @code in one line naming @words"""
        run = Run(argv, env or self.env())
        got, err = run.finish()
        self.assertEqual(got, code, err)
        lines = [line for line in err.splitlines() if line.strip()]
        self.assertEqual(len(lines), 1, err)
        for word in words:
            self.assertIn(word, err)
        self.assertEqual(run.events[-1]['exit-code'], code)
        return err


class BucketFaults:
    """Faults of the bucket and the sidecar mid-backup, for every source:
    the class's fault(strike, *extra) runs a backup that strike() hits and
    checks what follows"""

    def test_radosgw_stopped(self) -> None:
        def strike(_run) -> None:
            self.bucket.radosgw('stop')
            time.sleep(6)
            self.bucket.radosgw('start')
        self.assertEqual(self.fault(strike), 8)

    def test_sidecar_killed(self) -> None:
        sidecar = subprocess.Popen([SIDECAR], env=self.env(
            S3CHAIN_RUNTIME_DIR=self.runtime))
        qmp = os.path.join(self.runtime, 'qsd.qmp')
        while not os.path.exists(qmp):
            time.sleep(0.05)

        def strike(_run) -> None:
            sidecar.kill()
            sidecar.wait()
        try:
            self.assertEqual(self.fault(strike, '--sidecar-qmp', qmp), 8)
        finally:
            sidecar.kill()


class BackupTestCase(CommandRuns, unittest.TestCase):
    def setUp(self) -> None:
        self.bucket = Bucket()
        self.dir = tempfile.mkdtemp(prefix='s3chain-test-', dir='/tmp')
        self.runtime = os.path.join(self.dir, 'run')
        self.vm = VM(self.dir)

    def tearDown(self) -> None:
        self.vm.shutdown()
        self.bucket.cleanup()
        shutil.rmtree(self.dir, ignore_errors=True)

    def env(self, **extra: str) -> Dict[str, str]:
        return command_env(self.bucket, **extra)

    def args(self, *extra: str) -> List[str]:
        return ['backup', '--vm', 'vm1', '--qmp', self.vm.qmp_socket,
                '--repo', self.bucket.repo, '--runtime-dir', self.runtime,
                '--json', *extra]

    def slow_disks(self) -> None:
        """The backup job reads through a throttle filter on each device,
        so that a full backup lasts half a minute"""
        self.vm.cmd('object-add', qom_type='throttle-group', id='slow',
                    limits={'bps-read': 8 * MiB})
        for i, name in enumerate(('vd0', 'vd1')):
            self.vm.cmd('blockdev-add', driver='throttle',
                        node_name=f'slow{i}', throttle_group='slow',
                        file=f'disk{i}')
            self.vm.cmd('qom-set', path=f'/machine/peripheral/{name}',
                        property='drive', value=f'slow{i}')

    @contextlib.contextmanager
    def restored(self, backup_id: str, disk: str,
                 encryption_key: Optional[bytes] = None) -> Iterator[str]:
        """A raw file of the disk at backup @backup_id, read through
        s3chain, with @encryption_key if given"""
        secret = os.path.join(self.dir, 'secret')
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, 'w') as f:
            f.write(self.bucket.env['AWS_SECRET_ACCESS_KEY'])
        host = self.bucket.endpoint.split('://', 1)[1]
        key = (f'{self.bucket.prefix}/s3chain/vms/vm1/disks/{disk}/'
               f'{backup_id}.qcow2')
        keyed = ';encrypt-key-secret=e' if encryption_key else ''
        url = (f's3chain://{host};tls=off;access-key-id='
               f'{self.bucket.env["AWS_ACCESS_KEY_ID"]};key-secret=k{keyed}/'
               f'{self.bucket.name}/{key}')
        objects = ['--object', f'secret,id=k,file={secret}']
        if encryption_key:
            key_file = os.path.join(self.dir, 'encryption-key')
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                         0o600)
            with os.fdopen(fd, 'wb') as f:
                f.write(encryption_key)
            objects += ['--object', f'secret,id=e,file={key_file}']
        with scratch_raw('s3chain-restored-') as raw:
            subprocess.run([QEMU_IMG, 'convert', *objects, '-O', 'raw', url,
                            raw], check=True)
            yield raw

    def assertRestores(self, backup_id: str, disk: str,
                       expected: Union[bytes, str],
                       encryption_key: Optional[bytes] = None):
        """The disk at @backup_id, read through s3chain, is @expected: its
        bytes, or their SHA-256 (VM.disk_digest)"""
        with self.restored(backup_id, disk, encryption_key) as raw:
            if isinstance(expected, str):
                if file_digest(raw) != expected:
                    self.fail(f'backup {backup_id} of {disk} differs from '
                              f'the disk at its instant')
                return
            with open(raw, 'rb') as f:
                restored = f.read()
        self.assertEqual(len(restored), len(expected))
        if restored != expected:
            first = next(i for i in range(len(expected))
                         if restored[i] != expected[i])
            self.fail(f'backup {backup_id} of {disk} differs from the disk '
                      f'at its instant, first at byte {first}')

    def disk_types(self, result: dict) -> Dict[str, Tuple[str, str]]:
        return {d['name']: (d['type'], d['reason']) for d in result['disks']}
