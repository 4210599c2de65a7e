#!/usr/bin/env python3
"""Applies s3chain's glue to a QEMU 10.0 source tree, one area at a time.

Each area is a small, anchored text edit of a QEMU file, so that the
patch series made from it stays reviewable.  Usage:
    apply.py QEMU_TREE AREA
where AREA is qapi, build, trace, maintainers, unit or docs.
"""

import os
import sys

GLUE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(GLUE)


def edit(path, anchor, insertion, before=False):
    with open(path, encoding='utf-8') as f:
        text = f.read()
    if text.count(anchor) != 1:
        sys.exit(f'qemu-glue: anchor not found exactly once in {path}: '
                 f'{anchor!r}')
    if before:
        text = text.replace(anchor, insertion + anchor)
    else:
        text = text.replace(anchor, anchor + insertion)
    with open(path, 'w', encoding='utf-8') as f:
        f.write(text)


def read(path):
    with open(path, encoding='utf-8') as f:
        return f.read()


def apply_qapi(tree):
    schema = os.path.join(tree, 'qapi/block-core.json')
    edit(schema, "            'raw', 'rbd',\n",
         "            { 'name': 's3chain', 'if': 'CONFIG_CURL' },\n")
    edit(schema, "# @snapshot-access: Since 7.0\n",
         "#\n# @s3chain: Since 10.1\n")
    edit(schema, "      'rbd':        'BlockdevOptionsRbd',\n",
         "      's3chain':    { 'type': 'BlockdevOptionsS3chain',\n"
         "                      'if': 'CONFIG_CURL' },\n")
    edit(schema, "      'rbd':            'BlockdevCreateOptionsRbd',\n",
         "      's3chain':        { 'type': 'BlockdevCreateOptionsS3chain',\n"
         "                          'if': 'CONFIG_CURL' },\n")
    edit(schema, "##\n# @BlockdevOptions:\n",
         read(os.path.join(GLUE, 'block-core.json')), before=True)


def apply_build(tree):
    edit(os.path.join(tree, 'block/meson.build'),
         "  [rbd, 'rbd', files('rbd.c')],\n",
         "  [curl, 's3chain', files('s3chain.c', 's3chain-cache.c',\n"
         "                          's3chain-crypto.c',\n"
         "                          's3chain-http.c', 's3chain-image.c',\n"
         "                          's3chain-manifest.c', 's3chain-plan.c',\n"
         "                          's3chain-retry.c', 's3chain-sigv4.c',\n"
         "                          's3chain-url.c')],\n")


def apply_maintainers(tree):
    edit(os.path.join(tree, 'MAINTAINERS'),
         "F: block/curl.c\n\n",
         "S3CHAIN\n"
         "M: s3chain authors <s3chain@localhost>\n"
         "L: qemu-block@nongnu.org\n"
         "S: Maintained\n"
         "F: block/s3chain*\n"
         "F: tests/unit/test-s3chain-*\n"
         "F: tests/qemu-iotests/s3chain.py\n"
         "F: tests/qemu-iotests/tests/s3chain-*\n\n")


def apply_trace(tree):
    events = read(os.path.join(REPO, 'block/trace-events'))
    events = ''.join(line for line in events.splitlines(keepends=True)
                     if not line.startswith('# See docs/'))
    edit(os.path.join(tree, 'block/trace-events'),
         "# curl.c\n", events.lstrip('\n') + '\n', before=True)


def apply_unit(tree):
    edit(os.path.join(tree, 'tests/unit/meson.build'),
         "  'test-fifo': [],\n",
         "  'test-s3chain-sigv4': [crypto, '../../block/s3chain-sigv4.c',\n"
         "                         '../../block/s3chain-crypto.c'],\n"
         "  'test-s3chain-url': [crypto, '../../block/s3chain-url.c',\n"
         "                       '../../block/s3chain-sigv4.c',\n"
         "                       '../../block/s3chain-crypto.c'],\n"
         "  'test-s3chain-manifest': ['../../block/s3chain-manifest.c'],\n"
         "  'test-s3chain-plan': ['../../block/s3chain-plan.c'],\n")


def apply_docs(tree):
    with open(os.path.join(tree, 'docs/system/qemu-block-drivers.rst.inc'),
              'a', encoding='utf-8') as f:
        f.write('\n' + read(os.path.join(GLUE, 'qemu-block-drivers.rst.inc')))


AREAS = {
    'qapi': apply_qapi,
    'build': apply_build,
    'trace': apply_trace,
    'maintainers': apply_maintainers,
    'unit': apply_unit,
    'docs': apply_docs,
}

if __name__ == '__main__':
    if len(sys.argv) != 3 or sys.argv[2] not in AREAS:
        sys.exit('usage: apply.py QEMU_TREE ' + '|'.join(AREAS))
    AREAS[sys.argv[2]](sys.argv[1])
