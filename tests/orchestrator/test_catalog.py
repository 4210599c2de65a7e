# Hostile catalogs and manifests: `list`, `verify` and `restore` against
# catalogs and image manifests that other tools, people or bit rot left in
# the bucket (wrong types, loops, absurd values, a newer format), on the
# real radosgw with the real binary.  Each must end in its exit code and one line naming the object
# and the field: never an abort, a crash, a hang or "(null)".
#
# Copyright (c) 2026 The s3chain authors
#
# SPDX-License-Identifier: GPL-2.0-or-later

import json
import os
import subprocess
import tempfile
import unittest
from typing import Callable, Dict, List

from harness import S3CHAIN, Bucket, command_env

VM = 'vm1'
IDS = ['20261130T100000Z-0001', '20261130T110000Z-0002',
       '20261130T120000Z-0003']
# no command may take longer than this on a catalog of three backups
TIMEOUT = 60


def good_catalog(prefix: str) -> dict:
    """A full and two incrementals of one disk, as backup writes them"""
    backups = []
    for i, backup_id in enumerate(IDS):
        backups.append({
            'id': backup_id,
            'time': f'2026-11-30T1{i}:00:00.000000Z',
            'completed': f'2026-11-30T1{i}:00:05Z',
            'type': 'incremental' if i else 'full',
            'source': 'qmp',
            'offline': False,
            'duration': 5.0,
            'disks': [{
                'name': 'vd0',
                'node': 'disk0',
                'serial': '',
                'type': 'incremental' if i else 'full',
                'reason': 'first backup of this disk',
                'parent': IDS[i - 1] if i else None,
                'checkpoint': f's3chain-{backup_id}',
                'image': f'{prefix}/s3chain/vms/{VM}/disks/vd0/'
                         f'{backup_id}.qcow2',
                'virtual-size': 64 << 20,
                'cluster-size': 65536,
                'bytes-copied': 1 << 20,
                'bytes-stored': 1 << 20,
                'duration': 1.5,
            }],
        })
    return {'format': 1, 'vm': VM, 'backups': backups}


def disk(cat: dict, index: int) -> dict:
    return cat['backups'][index]['disks'][0]


def setter(path: Callable[[dict], dict], name: str, value) -> Callable:
    def mutate(cat: dict) -> None:
        path(cat)[name] = value
    return mutate


def dropper(path: Callable[[dict], dict], name: str) -> Callable:
    def mutate(cat: dict) -> None:
        del path(cat)[name]
    return mutate


def top(cat: dict) -> dict:
    return cat


def backup1(cat: dict) -> dict:
    return cat['backups'][1]


def disk1(cat: dict) -> dict:
    return disk(cat, 1)


def loop(cat: dict) -> None:
    """The full names its own child as parent: a chain with no end"""
    disk(cat, 0)['type'] = 'incremental'
    disk(cat, 0)['parent'] = IDS[2]


def unknown_compression(cat: dict) -> None:
    """What a newer s3chain might write: format 3, another compression"""
    cat['format'] = 3
    cat['compress'] = 'lz4'


def short_key_id(cat: dict) -> None:
    """Format 4, whose key id is not 32 lower-case hex digits"""
    cat['format'] = 4
    cat['key-id'] = '511ee7ca'


def duplicate_id(cat: dict) -> None:
    cat['backups'][2]['id'] = IDS[1]


def other_vms_image(cat: dict) -> None:
    disk(cat, 1)['image'] = disk(cat, 1)['image'].replace(f'/{VM}/', '/vm2/')


# name: (how the catalog is spoiled, or its raw body; exit code; words the
# one line must hold)
CASES: Dict[str, tuple] = {
    'not JSON': (b'{"format": 1, "backups": [', 11, ['not JSON']),
    'an array': (b'[]', 11, ['not a JSON object']),
    'a newer format': (setter(top, 'format', 5), 1, ['format 5', 'newer']),
    'key-id in format 1': (setter(top, 'key-id',
                                  '511ee7cad0d86d93a4242b4e1be2d0f7'), 11,
                           ['"key-id"', 'format 1']),
    'a short key id': (short_key_id, 11, ['"key-id"', 'hex']),
    'compress in format 1': (setter(top, 'compress', 'zstd'), 11,
                             ['"compress"', 'format 1']),
    'an unknown compression': (unknown_compression, 1, ['lz4', 'newer']),
    'compress a number': (setter(top, 'compress', 3), 11, ['"compress"']),
    'format as a string': (setter(top, 'format', '1'), 11, ['"format"']),
    'no backups': (dropper(top, 'backups'), 11, ['"backups"']),
    'backups an object': (setter(top, 'backups', {}), 11, ['"backups"']),
    'another VM\'s': (setter(top, 'vm', 'vm2'), 11, ['vm2']),
    'a backup a number': (lambda c: c['backups'].append(7), 11,
                          ['backup #4', 'not an object']),
    'an id a number': (setter(backup1, 'id', 12), 11, ['"id"']),
    'an id with a slash': (setter(backup1, 'id', '../x'), 11, ['id']),
    'a duplicate id': (duplicate_id, 11, ['unique']),
    'a time that is none': (setter(backup1, 'time', 'yesterday'), 11,
                            ['time', IDS[1]]),
    'disks a string': (setter(backup1, 'disks', 'vd0'), 11, ['"disks"']),
    'no disks': (setter(backup1, 'disks', []), 11, ['0 disks']),
    'a disk null': (lambda c: c['backups'][1]['disks'].__setitem__(0, None),
                    11, ['not an object']),
    'a disk without a name': (dropper(disk1, 'name'), 11, ['"name"']),
    'a disk name null': (setter(disk1, 'name', None), 11, ['"name"']),
    'a size as a string': (setter(disk1, 'virtual-size', '64M'), 11,
                           ['"virtual-size"']),
    'a negative size': (setter(disk1, 'virtual-size', -1), 11,
                        ['"virtual-size"', 'out of range']),
    'a cluster size of 3': (setter(disk1, 'cluster-size', 3), 11,
                            ['"cluster-size"']),
    'a huge cluster size': (setter(disk1, 'cluster-size', 1 << 40), 11,
                            ['"cluster-size"']),
    'a type of neither': (setter(disk1, 'type', 'differential'), 11,
                          ['"type"']),
    'a parent that is not there': (setter(disk1, 'parent', 'nope'), 11,
                                   ['parent nope']),
    'a parent that is later': (setter(disk1, 'parent', IDS[2]), 11,
                               ['parent']),
    'a parent loop': (loop, 11, ['parent']),
    'a parent a number': (setter(disk1, 'parent', 5), 11, ['"parent"']),
    'an incremental without a parent': (setter(disk1, 'parent', None), 11,
                                        ['without a parent']),
    'an image of another VM': (other_vms_image, 11, ['image']),
    'an image a list': (setter(disk1, 'image', ['x']), 11, ['"image"']),
    'offline a string': (setter(backup1, 'offline', 'no'), 11,
                         ['"offline"']),
    'a checkpoint a number': (setter(disk1, 'checkpoint', 1), 11,
                              ['"checkpoint"']),
    # what deleting adds: a deletion must never take an image another
    # backup needs
    'two disks on one image': (lambda c: disk1(c).__setitem__(
        'image', disk(c, 0)['image']), 11, ['another disk']),
    'an image of another disk': (lambda c: disk1(c).__setitem__(
        'image', disk1(c)['image'].replace('/vd0/', '/vd1/')), 11,
        ['image']),
    'a state of neither': (setter(backup1, 'state', 'gone'), 11,
                           ['state']),
    'garbage a backup needs': (lambda c: c.__setitem__(
        'garbage', [disk(c, 0)['image']]), 11, ['"garbage"']),
    'garbage a number': (setter(top, 'garbage', [1]), 11, ['"garbage"']),
    'a deleted id without a time': (setter(top, 'deleted', [{'id': 'x'}]),
                                    11, ['"time"']),
}


class HostileTestCase(unittest.TestCase):
    """A bucket with a catalog of VM at self.key, and a scratch dir"""

    def setUp(self) -> None:
        self.bucket = Bucket()
        self.dir = tempfile.mkdtemp(prefix='s3chain-cat-', dir='/tmp')
        self.key = f'{self.bucket.prefix}/s3chain/vms/{VM}/catalog.json'

    def tearDown(self) -> None:
        self.bucket.cleanup()
        subprocess.run(['rm', '-rf', self.dir], check=True)

    def put(self, spoil) -> bytes:
        if isinstance(spoil, bytes):
            body = spoil
        else:
            cat = good_catalog(self.bucket.prefix)
            spoil(cat)
            body = json.dumps(cat).encode()
        self.bucket.put(self.key, body)
        return body

    def run_command(self, args: List[str]) -> subprocess.CompletedProcess:
        return subprocess.run([S3CHAIN] + args + ['--repo', self.bucket.repo],
                              env=command_env(self.bucket), text=True,
                              capture_output=True, timeout=TIMEOUT)

    def refused(self, command: str, args: List[str], code: int,
                where: str, words: List[str]) -> dict:
        """@command ends in @code and one line; verify's fault, or else
        that line, names @where and @words.  Returns verify's fault."""
        res = self.run_command(args)
        self.assertEqual(res.returncode, code, res.stderr)
        self.assertEqual(len(res.stderr.strip().splitlines()), 1, res.stderr)
        self.assertNotIn('(null)', res.stderr + res.stdout)
        said, fault = res.stderr, {}
        if command == 'verify' and code == 11:
            # a fault among the others, named as they are
            result = [json.loads(line) for line in res.stdout.splitlines()
                      if '"result"' in line][0]
            self.assertFalse(result['intact'])
            fault = result['faults'][0]
            self.assertEqual(fault['object'], where)
            said = fault['message']
        else:
            self.assertIn(where, said)
        for word in words:
            self.assertIn(word, said)
        return fault


class TestHostileCatalogs(HostileTestCase):
    def commands(self) -> Dict[str, List[str]]:
        target = os.path.join(self.dir, 'vd0.raw')
        return {
            'list': ['list', '--vm', VM],
            'verify': ['verify', '--vm', VM, '--json'],
            'restore': ['restore', '--vm', VM, '--target', target],
        }

    def test_the_good_catalog_lists(self) -> None:
        """The cases below spoil a catalog that is good"""
        self.put(lambda cat: None)
        res = self.run_command(['list', '--vm', VM, '--json'])
        self.assertEqual(res.returncode, 0, res.stderr)
        self.assertEqual(len(json.loads(res.stdout)['vms'][0]['backups']), 3)

    def test_hostile_catalogs(self) -> None:
        for case, (spoil, code, words) in CASES.items():
            body = self.put(spoil)
            for command, args in self.commands().items():
                with self.subTest(case=case, command=command):
                    fault = self.refused(
                        command, args, code,
                        f's3://{self.bucket.name}/{self.key}', words)
                    if fault:
                        self.assertEqual(fault['affected'], ['all'])
            # nothing was written: not the catalog, not a target
            self.assertEqual(self.bucket.get(self.key), body, case)
            self.assertEqual(os.listdir(self.dir), [], case)


GOOD_MANIFEST = {'format': 's3chain-chunked', 'version': 3,
                 'size': 1 << 20, 'chunk-size': 4 << 20, 'generation': 1,
                 'chunks': []}
MD5 = '0' * 32


def manifest_with(**fields) -> bytes:
    return json.dumps(dict(GOOD_MANIFEST, **fields)).encode()


def patched(patches: list, version: int = 5, block_size: int = 65536,
            chunk_size: int = 4 << 20) -> bytes:
    """A manifest of one chunk with block sums and @patches"""
    sums = '0' * (8 * (chunk_size // block_size))
    return manifest_with(version=version, **{'chunk-size': chunk_size},
                         chunks=[[0, 'a1', MD5, '00000000', block_size, sums,
                                  patches]])


ONE_BLOCK = '0000000000000001'


# name: (the manifest's body, exit code, words the fault must hold)
MANIFESTS: Dict[str, tuple] = {
    'not JSON': (b'{"format": "s3chain-chunked", ', 11, ['JSON object']),
    'an array': (b'[]', 11, ['JSON object']),
    'another format': (manifest_with(format='zip'), 11, ['"format"']),
    'a version as a string': (manifest_with(version='3'), 11,
                              ['"version"']),
    'a newer version': (manifest_with(version=9), 1, ['version 9', 'newer']),
    'a negative size': (manifest_with(size=-1), 11, ['"size"']),
    'a size as a string': (manifest_with(size='1M'), 11, ['"size"']),
    'an absurd size': (manifest_with(size=1 << 60), 11,
                       ['"size"', 'more than a qcow2']),
    'no generation': (json.dumps({k: v for k, v in GOOD_MANIFEST.items()
                                  if k != 'generation'}).encode(), 11,
                      ['"generation"']),
    'a chunk size of 3': (manifest_with(**{'chunk-size': 3}), 11,
                          ['"chunk-size"']),
    'a chunk size of a TiB': (manifest_with(**{'chunk-size': 1 << 40}), 11,
                              ['"chunk-size"']),
    'chunks an object': (manifest_with(chunks={}), 11, ['"chunks"']),
    'a chunk a number': (manifest_with(chunks=[7]), 11, ['chunk entry 0']),
    'a chunk too long': (manifest_with(chunks=[[0, 'a1', MD5, '00000000',
                                                 65536, 1]]), 11,
                         ['chunk entry 0']),
    'a negative index': (manifest_with(chunks=[[-1, 'a1', MD5]]), 11,
                         ['index']),
    'an index past the end': (manifest_with(chunks=[[5, 'a1', MD5]]), 11,
                              ['beyond the image']),
    'chunks out of order': (manifest_with(size=16 << 20, chunks=[
        [1, 'a1', MD5], [0, 'a2', MD5]]), 11, ['out of order']),
    'a tag with a path': (manifest_with(chunks=[[0, '../../x', MD5]]), 11,
                          ['tag']),
    'a tag a number': (manifest_with(chunks=[[0, 12, MD5]]), 11,
                       ['not a string']),
    'a short MD5': (manifest_with(chunks=[[0, 'a1', 'abc']]), 11, ['MD5']),
    'a CRC-32 of words': (manifest_with(chunks=[[0, 'a1', MD5, 'zzzzzzzz']]),
                          11, ['CRC-32']),
    'a block size of 3': (manifest_with(chunks=[[0, 'a1', MD5, '00000000',
                                                  3]]), 11, ['block size']),
    'block sums in version 3': (manifest_with(chunks=[[
        0, 'a1', MD5, '00000000', 65536, '0' * 512]]), 11,
        ['chunk entry 0']),
    'block sums too short': (manifest_with(version=4, chunks=[[
        0, 'a1', MD5, '00000000', 65536, '0' * 504]]), 11, ['block sums']),
    'block sums in capitals': (manifest_with(version=4, chunks=[[
        0, 'a1', MD5, '00000000', 65536, 'A' * 512]]), 11, ['block sums']),
    'block sums a number': (manifest_with(version=4, chunks=[[
        0, 'a1', MD5, '00000000', 65536, 7]]), 11, ['block sums']),
    'patches in version 4': (patched([['b1', MD5, ONE_BLOCK]], version=4),
                             11, ['chunk entry 0']),
    'no patches in the list': (patched([]), 11, ['patches']),
    'five patches': (patched([[f'b{i}', MD5, ONE_BLOCK] for i in range(5)]),
                     11, ['patches']),
    'a patch with a path': (patched([['../b1', MD5, ONE_BLOCK]]), 11,
                            ['patch 0']),
    'a patch of no block': (patched([['b1', MD5, '0' * 16]]), 11,
                            ['patch 0']),
    'a patch past the chunk': (patched([['b1', MD5, '0000000000100000']],
                                       chunk_size=1 << 20), 11, ['patch 0']),
    'patches over large blocks': (patched([['b1', MD5, ONE_BLOCK]],
                                          block_size=131072), 11,
                                  ['not blocks of 65536']),
    'a patch mask in capitals': (patched([['b1', MD5, '000000000000000A']]),
                                 11, ['patch 0']),
}


class TestHostileManifests(HostileTestCase):
    """The catalog is good; the manifest of its second image is not"""

    def image_key(self, index: int) -> str:
        return disk(good_catalog(self.bucket.prefix), index)['image']

    def test_hostile_manifests(self) -> None:
        self.put(lambda cat: None)
        for i in (0, 2):
            self.bucket.put(self.image_key(i),
                            json.dumps(GOOD_MANIFEST).encode())
        key = self.image_key(1)
        where = f's3://{self.bucket.name}/{key}'
        target = os.path.join(self.dir, 'vd0.raw')
        commands = {
            'verify': ['verify', '--vm', VM, '--json'],
            'restore': ['restore', '--vm', VM, '--backup', IDS[2],
                        '--target', target],
        }
        for case, (body, code, words) in MANIFESTS.items():
            self.bucket.put(key, body)
            for command, args in commands.items():
                with self.subTest(case=case, command=command):
                    fault = self.refused(command, args, code, where, words)
                    if fault:
                        self.assertEqual(fault['backup'], IDS[1])
            self.assertEqual(self.bucket.get(key), body, case)
            self.assertEqual(os.listdir(self.dir), [], case)


if __name__ == '__main__':
    unittest.main()
