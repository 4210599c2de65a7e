# Endpoints that are not the S3 server the command expects, scripted: a
# web server that answers every request with an HTML page and 200, and a
# server that implements nothing (501).  Each must end in one clear line
# and its exit code, at once: never an empty repository, never a retry.
# And the request policy the command shares with the driver
# (block/s3chain-retry.c): 429 and 503 are tried again with growing
# waits, S3CHAIN_DEFAULT_RETRIES (5) times, then exit 8; a refused
# credential (403, or 400 ExpiredToken) is exit 5 at once.
#
# Copyright (c) 2026 The s3chain authors
#
# SPDX-License-Identifier: GPL-2.0-or-later

import http.server
import subprocess
import threading
import time
import unittest
from typing import List, Optional, Tuple

from harness import S3CHAIN

HTML = b'<html><head><title>Welcome</title></head><body>hi</body></html>'
EMPTY_LISTING = (b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult>'
                 b'<Name>bucket</Name><IsTruncated>false</IsTruncated>'
                 b'</ListBucketResult>')
# S3CHAIN_DEFAULT_RETRIES, block/s3chain-retry.h
RETRIES = 5


def s3_error(code: str) -> bytes:
    return (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>' +
            code.encode() + b'</Code></Error>')


class ScriptedServer:
    """Answers every request with @status and @body, counting them (with
    their times); the first requests with @first's (status, body) if
    given"""

    def __init__(self, status: int, body: bytes, content_type: str,
                 first: Optional[List[Tuple[int, bytes]]] = None) -> None:
        self.requests: List[str] = []
        self.times: List[float] = []
        outer = self
        script = list(first or [])

        class Handler(http.server.BaseHTTPRequestHandler):
            def answer(self) -> None:
                outer.requests.append(f'{self.command} {self.path}')
                outer.times.append(time.monotonic())
                length = int(self.headers.get('Content-Length') or 0)
                if length:
                    self.rfile.read(length)
                code, data = script.pop(0) if script else (status, body)
                self.send_response(code)
                self.send_header('Content-Type', content_type)
                self.send_header('Content-Length', str(len(data)))
                self.end_headers()
                if self.command != 'HEAD':
                    self.wfile.write(data)

            do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = answer

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0),
                                                     Handler)
        self.endpoint = f'http://127.0.0.1:{self.httpd.server_port}'
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class TestEndpoints(unittest.TestCase):
    def list(self, server: ScriptedServer) -> subprocess.CompletedProcess:
        """`list` against @server"""
        env = {'AWS_ACCESS_KEY_ID': 'AKIDEXAMPLE',
               'AWS_SECRET_ACCESS_KEY': 'wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY',
               'AWS_ENDPOINT_URL': server.endpoint, 'PATH': '/usr/bin:/bin'}
        try:
            return subprocess.run([S3CHAIN, 'list', '--repo', 's3://bucket'],
                                  env=env, text=True, capture_output=True,
                                  timeout=60)
        finally:
            server.close()

    def refused(self, server: ScriptedServer, code: int,
                words: List[str]) -> None:
        """`list` against @server ends in @code and one line of @words"""
        res = self.list(server)
        self.assertEqual(res.returncode, code, res.stderr)
        self.assertEqual(len(res.stderr.strip().splitlines()), 1, res.stderr)
        for word in words:
            self.assertIn(word, res.stderr)

    def test_a_web_page_is_no_empty_repository(self) -> None:
        server = ScriptedServer(200, HTML, 'text/html')
        self.refused(server, 2, ['ListBucketResult', server.endpoint])

    def test_not_implemented_is_not_retried(self) -> None:
        server = ScriptedServer(501, s3_error('NotImplemented'),
                                'application/xml')
        self.refused(server, 1, ['HTTP 501 NotImplemented'])
        self.assertEqual(len(server.requests), 1, server.requests)

    def test_busy_is_retried_with_growing_waits(self) -> None:
        for status, code in ((503, 'SlowDown'), (429, 'TooManyRequests')):
            server = ScriptedServer(status, s3_error(code), 'application/xml')
            self.refused(server, 8, [f'HTTP {status} {code}', 'try again'])
            self.assertEqual(len(server.requests), RETRIES + 1,
                             server.requests)
            # each wait at least half of 100 ms doubled each time
            gaps = [b - a for a, b in zip(server.times, server.times[1:])]
            for i, gap in enumerate(gaps):
                self.assertGreaterEqual(gap, 0.05 * 2 ** i * 0.9, gaps)

    def test_busy_then_answering_passes(self) -> None:
        server = ScriptedServer(200, EMPTY_LISTING, 'application/xml',
                                first=[(503, s3_error('SlowDown')),
                                       (429, s3_error('SlowDown'))])
        res = self.list(server)
        self.assertEqual(res.returncode, 0, res.stderr)
        # the first request three times, then the rest once
        self.assertEqual(len(set(server.requests[:3])), 1, server.requests)
        self.assertEqual(len(server.requests),
                         2 + len(set(server.requests)), server.requests)

    def test_refused_credentials_are_not_retried(self) -> None:
        for status, code in ((403, 'AccessDenied'), (400, 'ExpiredToken'),
                             (400, 'AuthorizationHeaderMalformed')):
            server = ScriptedServer(status, s3_error(code), 'application/xml')
            self.refused(server, 5, ['access denied', code])
            self.assertEqual(len(server.requests), 1, server.requests)


if __name__ == '__main__':
    unittest.main()
