#!/usr/bin/env python3
"""Applies s3chain's glue to a QEMU 10.0 source tree, one area at a time.

Each area is a small, anchored text edit of a QEMU file, so that the
patch series made from it stays reviewable.  Usage:
    apply.py QEMU_TREE AREA
where AREA is qapi, header, build, trace, maintainers, unit, iotests or
docs.

header, build, trace and unit follow the files of ours that the tree
holds so far, and may be applied again after each patch that adds some:
scripts/make-patches.sh grows the series a concern at a time, each patch
building on its own.  With S3CHAIN_GLUE_SOURCES set to a directory,
header and trace take block/s3chain.h and block/trace-events from there
(an earlier state of the driver, made by stages.py).
"""

import os
import re
import sys

GLUE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(GLUE)
# Where block/s3chain.h and block/trace-events are taken from: the
# repository, or a copy of its block/ in an earlier state of the driver
# (stages.py)
SOURCES = os.environ.get('S3CHAIN_GLUE_SOURCES', REPO)


def substitute(path, old, new):
    """Replaces @old, which @path must hold exactly once, with @new"""
    with open(path, encoding='utf-8') as f:
        text = f.read()
    if text.count(old) != 1:
        sys.exit(f'qemu-glue: anchor not found exactly once in {path}: '
                 f'{old!r}')
    with open(path, 'w', encoding='utf-8') as f:
        f.write(text.replace(old, new))


def edit(path, anchor, insertion, before=False):
    substitute(path, anchor,
               insertion + anchor if before else anchor + insertion)


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


def present(tree, pattern):
    """The files of ours under @tree that match @pattern, a regex of
    their path, sorted"""
    found = []
    for sub in ('block', 'tests/unit'):
        for name in sorted(os.listdir(os.path.join(tree, sub))):
            if re.fullmatch(pattern, f'{sub}/{name}'):
                found.append(f'{sub}/{name}')
    return found


def replace_ours(path, ours_re, anchor, insertion):
    """Puts @insertion before @anchor in @path, in place of what an earlier
    application put there (@ours_re)"""
    with open(path, encoding='utf-8') as f:
        text = f.read()
    text = re.sub(ours_re, '', text, flags=re.M | re.S)
    with open(path, 'w', encoding='utf-8') as f:
        f.write(text)
    if insertion:
        edit(path, anchor, insertion, before=True)


def apply_header(tree):
    """block/s3chain.h with the sections of the files the tree holds: the
    part before the first section, then each "/* s3chain-X.c: ... */"
    section whose file is there"""
    text = read(os.path.join(SOURCES, 'block/s3chain.h'))
    body, endif = text.rsplit('#endif\n', 1)
    parts = re.split(r'^(?=/\* s3chain-[a-z0-9]+\.c: )', body, flags=re.M)
    have = set(present(tree, r'block/s3chain.*'))
    out = []
    for line in parts[0].splitlines(keepends=True):
        m = re.match(r'#include "(s3chain-[a-z0-9]+\.h)"', line)
        if not m or f'block/{m.group(1)}' in have:
            out.append(line)
    for part in parts[1:]:
        source = re.match(r'/\* (s3chain-[a-z0-9]+\.c)', part).group(1)
        if f'block/{source}' in have:
            out.append(part)
    with open(os.path.join(tree, 'block/s3chain.h'), 'w',
              encoding='utf-8') as f:
        f.write(''.join(out).rstrip('\n') + '\n\n#endif\n' + endif)


def apply_build(tree):
    # a module of its own, not in the loop of one-library modules: it
    # needs zlib (the CRC-32 of chunks and blocks) besides libcurl, and
    # zstd and GnuTLS where they are found (compressed and encrypted
    # images)
    names = [os.path.basename(f)
             for f in present(tree, r'block/s3chain[a-z0-9-]*\.c')]
    listed = ''
    line = "  s3chain_src = files("
    for i, name in enumerate(names):
        item = f"'{name}'" + (')' if i + 1 == len(names) else ',')
        if len(line) + len(item) + 1 > 72:
            listed += line.rstrip() + '\n'
            line = ' ' * len("  s3chain_src = files(")
        line += item + ' '
    listed += line.rstrip() + '\n'
    replace_ours(os.path.join(tree, 'block/meson.build'),
                 r'^if curl\.found\(\)\n  s3chain_ss.*?^endif\n\n',
                 "# those are not exactly regular block modules, "
                 "so treat them apart\n",
                 "if curl.found()\n"
                 "  s3chain_ss = ss.source_set()\n" + listed +
                 "  s3chain_ss.add(when: [curl, zlib],\n"
                 "                 if_true: [s3chain_src, zstd, gnutls])\n"
                 "  if enable_modules\n"
                 "    modsrc += s3chain_src\n"
                 "  endif\n"
                 "  block_modules += {'s3chain' : s3chain_ss}\n"
                 "endif\n\n")


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
    """block/s3chain.c's and each other file's events, of those present"""
    text = read(os.path.join(SOURCES, 'block/trace-events'))
    have = set(present(tree, r'block/s3chain.*'))
    events = ''
    for section in re.split(r'\n(?=# s3chain)', text)[1:]:
        source = section.splitlines()[0][2:]
        if f'block/{source}' in have:
            events += section.rstrip('\n') + '\n\n'
    replace_ours(os.path.join(tree, 'block/trace-events'),
                 r'^# s3chain.*?(?=^# curl\.c\n)', "# curl.c\n", events)


# Each unit test of ours and what it is built from
UNIT_TESTS = {
    'test-s3chain-sigv4': ['crypto', 's3chain-sigv4.c', 's3chain-crypto.c'],
    'test-s3chain-url': ['crypto', 's3chain-url.c', 's3chain-sigv4.c',
                         's3chain-crypto.c'],
    'test-s3chain-manifest': ['gnutls', 's3chain-manifest.c',
                              's3chain-format.c', 's3chain-seal.c'],
    'test-s3chain-plan': ['s3chain-plan.c'],
    'test-s3chain-seal': ['gnutls', 's3chain-seal.c'],
}


def apply_unit(tree):
    entries = ''
    for test in present(tree, r'tests/unit/test-s3chain-[a-z0-9]+\.c'):
        name = os.path.basename(test)[:-2]
        head = f"  '{name}': ["
        deps = [d if d in ('crypto', 'gnutls') else f"'../../block/{d}'"
                for d in UNIT_TESTS[name]]
        line = head
        for i, dep in enumerate(deps):
            item = dep + ('],' if i + 1 == len(deps) else ',')
            if len(line) + len(item) + 1 > 76:
                entries += line.rstrip() + '\n'
                line = ' ' * len(head)
            line += item + ' '
        entries += line.rstrip() + '\n'
    replace_ours(os.path.join(tree, 'tests/unit/meson.build'),
                 r"^  'test-s3chain-[a-z0-9]+': \[.*?\],\n",
                 "  'test-fifo': [],\n", entries)


def apply_iotests(tree):
    """An -s3chain protocol for the iotests harness, as -nbd and -ssh:
    TEST_IMG is an s3chain:// filename in the bucket of the server that
    $S3CHAIN_TEST_ENV names, with its secret key as a secret object"""
    iotests = os.path.join(tree, 'tests/qemu-iotests')
    edit(os.path.join(iotests, 'check'),
         "'nbd', 'ssh', 'nfs', 'fuse'", ", 's3chain'", before=False)
    rc = os.path.join(iotests, 'common.rc')
    # every tool gets the secret object; qemu-img's subcommands take it
    # after their name, and bench takes none
    edit(rc, '_qemu_img_wrapper()\n{\n',
         '    local args=("$@")\n'
         '    if [ -n "$S3CHAIN_OBJECT" ] && [[ $# -gt 0 && $1 != -* &&\n'
         '                                     $1 != bench ]]; then\n'
         '        args=("$1" $S3CHAIN_OBJECT "${@:2}")\n'
         '    fi\n')
    substitute(rc, '"$QEMU_IMG_PROG" $QEMU_IMG_OPTIONS "$@"',
               '"$QEMU_IMG_PROG" $QEMU_IMG_OPTIONS "${args[@]}"')
    for prog, opts in (('$QEMU_PROG', '$QEMU_OPTIONS'),
                       ('$QEMU_IO_PROG', '$QEMU_IO_ARGS'),
                       ('$QSD_PROG', '$QSD_OPTIONS')):
        edit(rc, f'"{prog}" {opts} ', '$S3CHAIN_OBJECT ')
    edit(rc, '$QEMU_NBD_OPTIONS "$@"', '$S3CHAIN_OBJECT ', before=True)
    edit(rc, 'if [ "$IMGOPTSSYNTAX" = "true" ]; then\n    DRIVER=',
         read(os.path.join(GLUE, 'iotests-s3chain.rc')), before=True)
    edit(rc, '    elif [ "$IMGPROTO" = "nfs" ]; then\n'
         '        TEST_DIR="$DRIVER,file.driver=nfs',
         '    elif [ "$IMGPROTO" = "s3chain" ]; then\n'
         '        TEST_IMG_FILE=$S3CHAIN_PREFIX$TEST_DIR/t.$IMGFMT\n'
         '        TEST_IMG="$DRIVER,$S3CHAIN_FILE_OPTIONS'
         ',file.key=iotests$TEST_DIR/t.$IMGFMT"\n',
         before=True)
    edit(rc, '    elif [ "$IMGPROTO" = "nfs" ]; then\n'
         '        TEST_IMG_FILE=$TEST_DIR/t.$IMGFMT\n'
         '        REMOTE_TEST_DIR="nfs:',
         '    elif [ "$IMGPROTO" = "s3chain" ]; then\n'
         '        TEST_IMG="$S3CHAIN_PREFIX$TEST_DIR/t.$IMGFMT"\n',
         before=True)
    edit(rc, '    if [ $IMGPROTO = "nbd" ]; then\n        _stop_nbd_server\n'
         '    fi\n\n    # XXX(hch)',
         '    if [ $IMGPROTO = "s3chain" ]; then\n'
         '        # s3chain never overwrites an image: make room\n'
         '        _rm_test_img "$img_name"\n'
         '    fi\n\n', before=True)
    edit(rc, '_rm_test_img()\n{\n    local img=$1\n',
         '\n    if [[ $IMGPROTO == s3chain && $img == s3chain://* ]]; then\n'
         '        "$PYTHON" "$S3CHAIN_PY" rm "$img"\n'
         '        return\n'
         '    fi\n')
    edit(rc, '        rbd)\n            rbd --no-progress rm',
         '        s3chain)\n'
         '            "$PYTHON" "$S3CHAIN_PY" rm-under "iotests$TEST_DIR/"\n'
         '            ;;\n\n', before=True)
    edit(os.path.join(iotests, 'common.filter'),
         '_filter_testdir()\n{\n    sed ',
         '-e "s#$REMOTE_TEST_DIR/#TEST_DIR/#g" \\\n        ')
    # python tests name their images in local files whatever the
    # protocol: over s3chain, only those that ask for it run
    edit(os.path.join(iotests, 'iotests.py'),
         '    assert not (supported and unsupported)\n',
         "\n    if imgproto == 's3chain' and 's3chain' not in supported:\n"
         "        notrun('python tests keep their images in local files')\n")


def apply_docs(tree):
    with open(os.path.join(tree, 'docs/system/qemu-block-drivers.rst.inc'),
              'a', encoding='utf-8') as f:
        f.write('\n' + read(os.path.join(GLUE, 'qemu-block-drivers.rst.inc')))


AREAS = {
    'qapi': apply_qapi,
    'header': apply_header,
    'build': apply_build,
    'trace': apply_trace,
    'maintainers': apply_maintainers,
    'unit': apply_unit,
    'iotests': apply_iotests,
    'docs': apply_docs,
}

if __name__ == '__main__':
    if len(sys.argv) != 3 or sys.argv[2] not in AREAS:
        sys.exit('usage: apply.py QEMU_TREE ' + '|'.join(AREAS))
    AREAS[sys.argv[2]](sys.argv[1])
