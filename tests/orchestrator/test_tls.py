# s3chain over HTTPS: radosgw's TLS endpoint (scripts/s3-server.sh makes
# a CA and a certificate for 127.0.0.1): backup, restore, verify, list and
# serve with --cafile; a CA that did not sign the certificate is one line
# and exit 2, on one connection (a TCP relay counts them: never retried);
# --no-verify-tls works and warns.
#
# Copyright (c) 2026 The s3chain authors
#
# SPDX-License-Identifier: GPL-2.0-or-later

import os
import signal
import socket
import subprocess
import threading
from typing import Dict, List

from harness import QEMU_IMG, BackupTestCase, Run


class TcpRelay:
    """Relays TCP connections to @port of 127.0.0.1, counting them"""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connections = 0
        self.server = socket.create_server(('127.0.0.1', 0))
        self.endpoint_port = self.server.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            upstream = socket.create_connection(('127.0.0.1', self.port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self.pipe, args=(a, b),
                                 daemon=True).start()

    @staticmethod
    def pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.server.close()


class TestTLS(BackupTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.endpoint = self.bucket.env['S3CHAIN_TLS_ENDPOINT']
        self.ca = self.bucket.env['S3CHAIN_TLS_CA']

    def env(self, **extra: str) -> Dict[str, str]:
        return super().env(**dict({'AWS_ENDPOINT_URL': self.endpoint},
                                  **extra))

    def args(self, *extra: str) -> List[str]:
        return super().args('--cafile', self.ca, *extra)

    def command(self, *argv: str) -> Run:
        return Run([argv[0], '--repo', self.bucket.repo, '--json',
                    '--cafile', self.ca, *argv[1:]], self.env())

    def ok(self, *argv: str) -> Run:
        run = self.command(*argv)
        code, err = run.finish()
        self.assertEqual(code, 0, err)
        return run

    def other_ca(self) -> str:
        """A CA that signed nothing radosgw shows"""
        key, pem = (os.path.join(self.dir, n) for n in ('o.key', 'o.pem'))
        subprocess.run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048',
                        '-nodes', '-days', '1', '-subj', '/CN=another-ca',
                        '-keyout', key, '-out', pem], check=True,
                       capture_output=True)
        return pem

    def test_every_command_over_https(self) -> None:
        full = self.backup()
        at_full = {d: self.vm.disk_bytes(d) for d in ('vd0', 'vd1')}
        self.vm.write('vd0', '-P 0x71 5M 3M')
        inc = self.backup()
        self.assertEqual(self.disk_types(inc)['vd0'][0], 'incremental')

        for point, expected in ((full['backup'], at_full),
                                (inc['backup'], None)):
            targets = {d: os.path.join(self.dir, f'{d}.raw')
                       for d in ('vd0', 'vd1')}
            self.ok('restore', '--vm', 'vm1', '--backup', point,
                    *[f'--target={d}={p}' for d, p in targets.items()])
            for disk, path in targets.items():
                with open(path, 'rb') as f:
                    got = f.read()
                os.remove(path)
                want = expected[disk] if expected else \
                    self.vm.disk_bytes(disk)
                self.assertTrue(got == want, f'{disk} at {point}')

        self.assertTrue(self.ok('verify', '--vm', 'vm1',
                                '--deep').result()['intact'])
        backups = self.ok('list').result()['vms'][0]['backups']
        self.assertEqual([b['id'] for b in backups],
                         [full['backup'], inc['backup']])

        sock = os.path.join(self.dir, 'serve.sock')
        serve = self.command('serve', '--vm', 'vm1', '--disk', 'vd0',
                             '--listen',
                             f'unix:{sock}', '--runtime-dir',
                             os.path.join(self.dir, 'serve-run'))
        try:
            ready = serve.wait_event('ready')
            raw = os.path.join(self.dir, 'served.raw')
            subprocess.run([QEMU_IMG, 'convert', '-f', 'raw', '-O', 'raw',
                            ready['uri'], raw], check=True)
            with open(raw, 'rb') as f:
                self.assertTrue(f.read() == self.vm.disk_bytes(ready['disk']))
        finally:
            serve.proc.send_signal(signal.SIGTERM)
            serve.finish()

    def test_wrong_ca_is_one_line_and_no_retry(self) -> None:
        graph = self.vm.graph()
        relay = TcpRelay(int(self.endpoint.rsplit(':', 1)[1]))
        try:
            env = self.env(
                AWS_ENDPOINT_URL=f'https://127.0.0.1:{relay.endpoint_port}')
            argv = ['backup', '--vm', 'vm1', '--qmp', self.vm.qmp_socket,
                    '--repo', self.bucket.repo, '--runtime-dir', self.runtime,
                    '--json', '--cafile', self.other_ca()]
            self.run_refused(argv, 2, env=env, words=('TLS', '--cafile'))
            self.assertEqual(relay.connections, 1)
        finally:
            relay.close()
        self.assertEqual(self.bucket.objects(), {})
        self.assertEqual(self.vm.graph(), graph)

    def test_system_cas_do_not_know_a_private_ca(self) -> None:
        argv = ['list', '--repo', self.bucket.repo, '--json']
        self.run_refused(argv, 2, words=('TLS', self.endpoint))

    def test_no_verify_tls_works_and_warns(self) -> None:
        argv = ['backup', '--vm', 'vm1', '--qmp', self.vm.qmp_socket,
                '--repo', self.bucket.repo, '--runtime-dir', self.runtime,
                '--json', '--no-verify-tls']
        run = Run(argv, self.env())
        code, err = run.finish()
        self.assertEqual(code, 0, err)
        self.assertIn('not verified', err)
        self.assertRestores(run.result()['backup'], 'vd1',
                            self.vm.disk_bytes('vd1'))

    def test_unreadable_cafile(self) -> None:
        self.run_refused(['list', '--repo', self.bucket.repo, '--json',
                          '--cafile', os.path.join(self.dir, 'none.pem')], 2,
                         words=('--cafile', 'none.pem'))
