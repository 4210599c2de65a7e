# Endpoints that are not the S3 server the command expects, scripted: a
# web server that answers every request with an HTML page and 200, and a
# server that implements nothing (501).  Each must end in one clear line
# and its exit code, at once: never an empty repository, never a retry.
#
# Copyright (c) 2026 The s3chain authors
#
# SPDX-License-Identifier: GPL-2.0-or-later

import http.server
import subprocess
import threading
import unittest
from typing import List

from harness import S3CHAIN

HTML = b'<html><head><title>Welcome</title></head><body>hi</body></html>'


class ScriptedServer:
    """Answers every request with @status and @body, counting them"""

    def __init__(self, status: int, body: bytes, content_type: str) -> None:
        self.requests: List[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def answer(self) -> None:
                outer.requests.append(f'{self.command} {self.path}')
                length = int(self.headers.get('Content-Length') or 0)
                if length:
                    self.rfile.read(length)
                self.send_response(status)
                self.send_header('Content-Type', content_type)
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                if self.command != 'HEAD':
                    self.wfile.write(body)

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
    def refused(self, server: ScriptedServer, code: int,
                words: List[str]) -> None:
        """`list` against @server ends in @code and one line of @words"""
        env = {'AWS_ACCESS_KEY_ID': 'AKIDEXAMPLE',
               'AWS_SECRET_ACCESS_KEY': 'wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY',
               'AWS_ENDPOINT_URL': server.endpoint, 'PATH': '/usr/bin:/bin'}
        try:
            res = subprocess.run([S3CHAIN, 'list', '--repo', 's3://bucket'],
                                 env=env, text=True, capture_output=True,
                                 timeout=60)
        finally:
            server.close()
        self.assertEqual(res.returncode, code, res.stderr)
        self.assertEqual(len(res.stderr.strip().splitlines()), 1, res.stderr)
        for word in words:
            self.assertIn(word, res.stderr)

    def test_a_web_page_is_no_empty_repository(self) -> None:
        server = ScriptedServer(200, HTML, 'text/html')
        self.refused(server, 2, ['ListBucketResult', server.endpoint])

    def test_not_implemented_is_not_retried(self) -> None:
        body = (b'<?xml version="1.0" encoding="UTF-8"?><Error>'
                b'<Code>NotImplemented</Code></Error>')
        server = ScriptedServer(501, body, 'application/xml')
        self.refused(server, 1, ['HTTP 501 NotImplemented'])
        self.assertEqual(len(server.requests), 1, server.requests)


if __name__ == '__main__':
    unittest.main()
