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


class S3Server:
    """The bucket under test, with a fresh key prefix for each test."""

    def __init__(self) -> None:
        try:
            # pylint: disable=import-outside-toplevel
            import boto3
        except ImportError:
            iotests.notrun('python3-boto3 is needed to upload test images')
        self.env = load_env()
        self.endpoint = self.env['S3CHAIN_ENDPOINT']
        self.bucket = self.env['S3CHAIN_BUCKET']
        self.prefix = f'iotests/{uuid.uuid4().hex[:12]}/'
        self.client = boto3.client(
            's3', endpoint_url=self.endpoint,
            aws_access_key_id=self.env['AWS_ACCESS_KEY_ID'],
            aws_secret_access_key=self.env['AWS_SECRET_ACCESS_KEY'],
            region_name=self.env.get('AWS_REGION', 'us-east-1'))
        self.secret_file = os.path.join(iotests.test_dir, 's3-secret')
        self.write_secret(self.env['AWS_SECRET_ACCESS_KEY'])

    def write_secret(self, secret: str) -> None:
        fd = os.open(self.secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                     0o600)
        with os.fdopen(fd, 'w', encoding='utf-8') as f:
            f.write(secret)

    def secret_object(self) -> List[str]:
        return ['--object', f'secret,id={SECRET_ID},file={self.secret_file}']

    def url(self, name: str, **options: str) -> str:
        host = self.endpoint.split('://', 1)[1]
        opts = {
            'tls': 'off' if self.endpoint.startswith('http://') else 'on',
            'access-key-id': self.env['AWS_ACCESS_KEY_ID'],
            'key-secret': SECRET_ID,
        }
        opts.update(options)
        params = ''.join(f';{k}={v}' for k, v in opts.items())
        return f's3chain://{host}{params}/{self.bucket}/{self.prefix}{name}'

    def upload(self, path: str, name: str) -> None:
        self.client.upload_file(path, self.bucket, self.prefix + name)

    def delete(self, name: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.prefix + name)

    def cleanup(self) -> None:
        listing = self.client.list_objects_v2(Bucket=self.bucket,
                                              Prefix=self.prefix)
        for obj in listing.get('Contents', []):
            self.client.delete_object(Bucket=self.bucket, Key=obj['Key'])

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
