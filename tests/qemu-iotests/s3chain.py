# Helpers for the s3chain iotests: the S3 server under test, credentials
# in secret files, and the objects a test puts in the bucket.
#
# The tests run against the server that the env file named by
# S3CHAIN_TEST_ENV describes (scripts/s3-server.sh writes one), and are
# skipped without it.
#
# Copyright (c) 2026 The s3chain authors
#
# SPDX-License-Identifier: GPL-2.0-or-later

import os
import subprocess
import time
import uuid
from typing import Dict, List

import iotests

SECRET_ID = 's3key'


def load_env() -> Dict[str, str]:
    path = os.environ.get('S3CHAIN_TEST_ENV')
    if not path or not os.path.exists(path):
        iotests.notrun('S3CHAIN_TEST_ENV does not name an S3 server env file')
    env = {}
    with open(path, encoding='utf-8') as f:
        for line in f:
            name, sep, value = line.strip().partition('=')
            if sep:
                env[name] = value
    return env


def client_of(env: Dict[str, str]):  # -> botocore S3 client
    try:
        # pylint: disable=import-outside-toplevel
        import boto3
    except ImportError:
        iotests.notrun('python3-boto3 is needed to reach the S3 server')
    return boto3.client(
        's3', endpoint_url=env['S3CHAIN_ENDPOINT'],
        aws_access_key_id=env['AWS_ACCESS_KEY_ID'],
        aws_secret_access_key=env['AWS_SECRET_ACCESS_KEY'],
        region_name=env.get('AWS_REGION', 'us-east-1'))


def delete_under(client, bucket: str, prefix: str,
                 which=lambda key: True) -> None:
    """Deletes the objects whose key starts with `prefix`, of those
    `which` names"""
    pages = client.get_paginator('list_objects_v2').paginate(
        Bucket=bucket, Prefix=prefix)
    for page in pages:
        for obj in page.get('Contents', []):
            if which(obj['Key']):
                client.delete_object(Bucket=bucket, Key=obj['Key'])


def remove(command: str, where: str) -> None:
    """For the -s3chain protocol of common.rc: `rm URL` deletes the
    image at an s3chain:// URL (its manifest, chunks and lock),
    `rm-under PREFIX` every object whose key starts with PREFIX"""
    env = load_env()
    client = client_of(env)
    bucket = env['S3CHAIN_BUCKET']
    if command == 'rm':
        key = where.split('/', 3)[3].split('/', 1)[1]
        delete_under(client, bucket, key,
                     which=lambda k: k in (key, key + '.lock') or
                     k.startswith(key + '.d/'))
    else:
        delete_under(client, bucket, where)


class S3Server:
    """The bucket under test, with a fresh key prefix for each test."""

    def __init__(self) -> None:
        self.env = load_env()
        self.endpoint = self.env['S3CHAIN_ENDPOINT']
        self.bucket = self.env['S3CHAIN_BUCKET']
        self.prefix = f'iotests/{uuid.uuid4().hex[:12]}/'
        self.client = client_of(self.env)
        self.secret_file = os.path.join(iotests.test_dir, 's3-secret')
        self.write_secret(self.env['AWS_SECRET_ACCESS_KEY'])

    def write_secret(self, secret: str) -> None:
        fd = os.open(self.secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                     0o600)
        with os.fdopen(fd, 'w', encoding='utf-8') as f:
            f.write(secret)

    def secret_object(self) -> List[str]:
        return ['--object', f'secret,id={SECRET_ID},file={self.secret_file}']

    def url(self, name: str, endpoint: str = '', **options: str) -> str:
        """The s3chain:// URL of object `name`, through `endpoint` if set"""
        endpoint = endpoint or self.endpoint
        host = endpoint.split('://', 1)[1]
        opts = {
            'tls': 'off' if endpoint.startswith('http://') else 'on',
            'access-key-id': self.env['AWS_ACCESS_KEY_ID'],
            'key-secret': SECRET_ID,
        }
        opts.update(options)
        params = ''.join(f';{k}={v}' for k, v in opts.items())
        return f's3chain://{host}{params}/{self.bucket}/{self.prefix}{name}'

    def options(self, name: str, **options: str) -> Dict[str, str]:
        """The s3chain node options of object `name`, for what a URL
        cannot carry"""
        return {'driver': 's3chain', 'endpoint': self.endpoint,
                'bucket': self.bucket, 'key': self.prefix + name,
                'access-key-id': self.env['AWS_ACCESS_KEY_ID'],
                'key-secret': SECRET_ID, **options}

    def upload(self, path: str, name: str) -> None:
        self.client.upload_file(path, self.bucket, self.prefix + name)

    def delete(self, name: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.prefix + name)

    def cleanup(self) -> None:
        delete_under(self.client, self.bucket, self.prefix)

    def control(self, action: str) -> None:
        """rgw-stop or rgw-start, through the server's own script"""
        subprocess.run([self.env['S3CHAIN_S3_CTL'], action], check=True,
                       stdout=subprocess.DEVNULL,
                       env=dict(os.environ,
                                S3CHAIN_S3_DIR=self.env['S3CHAIN_S3_DIR']))

    def wait_until_up(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.client.head_bucket(Bucket=self.bucket)
                return
            except Exception:  # pylint: disable=broad-except
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


class FaultProxy:
    """
    An HTTP proxy in front of the S3 server that injects faults into the
    answers to ranged GETs of data (the 1-byte probe at open passes).

    Each fault in `faults` is used once, in order: '503' answers
    "503 SlowDown"; 'drop' sends half the body and closes the connection;
    'stall' sends the headers and then nothing for `stall_seconds`.
    """

    def __init__(self, upstream: str) -> None:
        # pylint: disable=import-outside-toplevel
        import http.client
        import http.server
        import threading

        self.upstream = upstream.split('://', 1)[1]
        self.faults: List[str] = []
        self.stall_seconds = 5.0
        self.requests: List[Dict[str, str]] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # pylint: disable=invalid-name
                headers = {k: v for k, v in self.headers.items()}
                with proxy.lock:
                    proxy.requests.append(headers)
                    data_read = headers.get('Range', '') not in ('',
                                                                 'bytes=0-0')
                    fault = proxy.faults.pop(0) \
                        if data_read and proxy.faults else None
                if fault == '503':
                    body = b'<Error><Code>SlowDown</Code></Error>'
                    self.send_response(503)
                    self.send_header('Content-Length', str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                conn.request('GET', self.path, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                conn.close()
                self.send_response(resp.status)
                for name, value in resp.getheaders():
                    if name.lower() not in ('connection', 'keep-alive',
                                            'transfer-encoding'):
                        self.send_header(name, value)
                if fault == 'stall':
                    self.end_headers()
                    time.sleep(proxy.stall_seconds)
                    self.close_connection = True
                    return
                self.end_headers()
                if fault == 'drop':
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(('127.0.0.1', 0),
                                                      Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f'http://127.0.0.1:{self.server.server_address[1]}'

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


if __name__ == '__main__':
    import sys
    if len(sys.argv) != 3 or sys.argv[1] not in ('rm', 'rm-under'):
        sys.exit('usage: s3chain.py rm URL | rm-under PREFIX')
    remove(sys.argv[1], sys.argv[2])
