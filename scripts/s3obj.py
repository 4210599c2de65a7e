#!/usr/bin/env python3
"""A plain S3 client for the demo and the benchmarks, on boto3.

    s3obj.py ENV_FILE put FILE KEY        upload FILE (multipart, parallel)
    s3obj.py ENV_FILE presign KEY         print a presigned GET URL
    s3obj.py ENV_FILE size KEY            print the object's size
    s3obj.py ENV_FILE rm-prefix PREFIX    delete every object under PREFIX

ENV_FILE is the one scripts/s3-server.sh writes.
"""

# SPDX-License-Identifier: GPL-2.0-or-later

import sys

import boto3
from boto3.s3.transfer import TransferConfig


def load_env(path):
    env = {}
    with open(path, encoding='utf-8') as f:
        for line in f:
            name, sep, value = line.strip().partition('=')
            if sep:
                env[name] = value
    return env


def client(env):
    """A boto3 S3 client of the server that @env describes"""
    return boto3.client('s3', endpoint_url=env['S3CHAIN_ENDPOINT'],
                        aws_access_key_id=env['AWS_ACCESS_KEY_ID'],
                        aws_secret_access_key=env['AWS_SECRET_ACCESS_KEY'],
                        region_name=env.get('AWS_REGION', 'us-east-1'))


def delete_prefix(s3, bucket, prefix):
    """Deletes every object of @bucket whose key starts with @prefix"""
    paginator = s3.get_paginator('list_objects_v2')
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get('Contents', []):
            s3.delete_object(Bucket=bucket, Key=obj['Key'])


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    env = load_env(sys.argv[1])
    action, args = sys.argv[2], sys.argv[3:]
    bucket = env['S3CHAIN_BUCKET']
    s3 = client(env)
    if action == 'put':
        config = TransferConfig(multipart_chunksize=8 * 1024 * 1024,
                                max_concurrency=4)
        s3.upload_file(args[0], bucket, args[1], Config=config)
    elif action == 'presign':
        print(s3.generate_presigned_url(
            'get_object', Params={'Bucket': bucket, 'Key': args[0]},
            ExpiresIn=3600))
    elif action == 'size':
        print(s3.head_object(Bucket=bucket, Key=args[0])['ContentLength'])
    elif action == 'rm-prefix':
        delete_prefix(s3, bucket, args[0])
    else:
        sys.exit(f's3obj: unknown action {action}\n{__doc__}')


if __name__ == '__main__':
    main()
