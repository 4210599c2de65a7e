#!/usr/bin/env python3
"""Checks that the QEMU series in patches/ is bisectable: applied one
patch at a time to the pinned QEMU, each state compiles every s3chain
file it holds with the full build's own flags (-Werror), keeps the
driver's symbols resolved among its own files, and builds and passes
each unit test it holds.  A state with the driver links a qemu-img of
its own files and, with S3CHAIN_TEST_ENV naming an S3 server's env file
(scripts/s3-server.sh), does what that state of the driver can: read an
image stored as one object; read a chunked image and an encrypted,
compressed one (written by the full build); write both kinds and read
them back; each read compared with what was stored.  Then the whole series' s3chain files compile with clang's
-Wthread-safety, which checks QEMU's graph lock annotations (gcc
ignores them).

It reuses the full build (build/qemu, of the whole series) for QEMU's
own objects and generated headers, so a state costs seconds, not a QEMU
build: what it compiles anew are our files, as each state has them, and
the block layer's trace header, generated from each state's trace
events (an event used before the patch that adds it fails there).
Usage: check-series.py PRISTINE_QEMU_GIT QEMU_BUILD_DIR PATCHES_DIR
"""

# SPDX-License-Identifier: GPL-2.0-or-later
import json
import os
import random
import re
import shlex
import subprocess
import sys
import tempfile

import s3obj


def run(argv, **kwargs):
    return subprocess.run(argv, check=True, **kwargs)


class Build:
    """The full build: how it compiles each file, and links each test"""

    def __init__(self, build_dir):
        self.dir = build_dir
        with open(os.path.join(build_dir, 'compile_commands.json'),
                  encoding='utf-8') as f:
            self.compiles = {e['output']: e['command'] for e in json.load(f)}
        # the source tree the full build was made from, as its commands
        # name it, relative and absolute
        self.src_rel = '../qemu-src'
        self.src_abs = os.path.realpath(os.path.join(build_dir,
                                                     self.src_rel))

    def in_tree(self, arg, tree):
        """@arg of one of the build's commands, naming @tree's files
        instead of the full build's source tree"""
        return arg.replace(self.src_abs, tree).replace(self.src_rel, tree)

    def trace_header(self, tree, scratch):
        """Generates @scratch/trace/trace-block.h from @tree's
        block/trace-events, as the full build generates its own"""
        os.makedirs(os.path.join(scratch, 'trace'))
        argv = [self.in_tree(arg, tree)
                for arg in self.last_command('trace/trace-block.h')]
        argv[-1] = os.path.join(scratch, 'trace/trace-block.h')
        run(argv, cwd=self.dir)

    def compile(self, output, tree, scratch, thread_safety=False):
        """Compiles the source of @output from @tree instead, into
        @scratch, with @scratch's trace header (trace_header()); returns
        the object's path.  With @thread_safety, only checks it with
        clang's -Wthread-safety."""
        argv = shlex.split(self.compiles[output])
        obj = os.path.join(scratch, output.replace('/', '_'))
        # found before the build's own generated headers
        out = [argv.pop(0), '-iquote', scratch]
        skip = 0
        for arg in argv:
            if skip:
                skip -= 1
                continue
            if arg in ('-MQ', '-MF', '-o'):
                skip = 1
                continue
            if arg == '-MD' or (thread_safety and arg.startswith(
                    ('-fzero-call-used-regs', '-ftrivial-auto-var-init'))):
                # gcc's hardening flags that clang 14 lacks
                continue
            out.append(self.in_tree(arg, tree))
        if thread_safety:
            out = ['clang', *out[1:], '-fsyntax-only', '-Wthread-safety',
                   '-Wno-unknown-warning-option']
        else:
            out += ['-o', obj]
        run(out, cwd=self.dir)
        return obj

    def block_object(self, name):
        return f'libblock.a.p/block_{name}.o'

    def link_qemu_img(self, objects, scratch):
        """qemu-img with the driver's @objects in place of the full
        build's; returns its path"""
        binary = os.path.join(scratch, 'qemu-img')
        argv = []
        ours = re.compile(r'libblock\.a\.p/block_s3chain[a-z0-9-]*\.c\.o')
        for arg in self.last_command('qemu-img'):
            if argv and argv[-1] == '-o':
                arg = binary
            elif ours.fullmatch(arg):
                if objects:
                    argv += objects
                    objects = []
                continue
            argv.append(arg)
        run(argv, cwd=self.dir)
        return binary

    def last_command(self, target):
        """The command that makes @target"""
        commands = subprocess.run(
            ['ninja', '-C', self.dir, '-t', 'commands', target], check=True,
            capture_output=True, text=True).stdout.splitlines()
        return shlex.split(commands[-1])


def symbols(objects):
    """(defined, undefined) s3chain_ symbols of @objects"""
    defined, undefined = set(), set()
    out = subprocess.run(['nm', *objects], check=True, capture_output=True,
                         text=True).stdout
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 2 or not fields[-1].startswith('s3chain_'):
            continue
        (undefined if fields[-2] == 'U' else defined).add(fields[-1])
    return defined, undefined


def our_block_files(tree):
    return sorted(n for n in os.listdir(os.path.join(tree, 'block'))
                  if re.fullmatch(r's3chain[a-z0-9-]*\.c', n))


class Bucket:
    """The S3 server of S3CHAIN_TEST_ENV, where each state's qemu-img
    reads and writes under one prefix"""

    def __init__(self, env_file, work):
        self.env = s3obj.load_env(env_file)
        self.s3 = s3obj.client(self.env)
        self.name = self.env['S3CHAIN_BUCKET']
        self.prefix = f'check-series-{os.getpid()}/'
        self.secret = os.path.join(work, 'secret')
        with open(os.open(self.secret, os.O_WRONLY | os.O_CREAT, 0o600),
                  'w', encoding='utf-8') as f:
            f.write(self.env['AWS_SECRET_ACCESS_KEY'])
        # the key of the encrypted images
        self.key = os.path.join(work, 'key')
        with open(os.open(self.key, os.O_WRONLY | os.O_CREAT, 0o600),
                  'wb') as f:
            f.write(os.urandom(32))
        self.data = os.path.join(work, 'data.raw')
        # chunks of 4 MiB: stored, all zero (not stored), and a short last
        rand = random.Random(7)
        with open(self.data, 'wb') as f:
            f.write(rand.randbytes(4 << 20) + bytes(4 << 20) +
                    rand.randbytes((1 << 20) + 12288))

    def url(self, key, encrypted=False):
        endpoint = self.env['S3CHAIN_ENDPOINT']
        host = endpoint.split('://', 1)[1]
        tls = ';tls=off' if endpoint.startswith('http://') else ''
        sealed = ';encrypt-key-secret=ek' if encrypted else ''
        return (f's3chain://{host}{tls};access-key-id='
                f'{self.env["AWS_ACCESS_KEY_ID"]};key-secret=s3key{sealed}/'
                f'{self.name}/{self.prefix}{key}')

    def convert(self, qemu_img, src, dst, subject, options=()):
        res = subprocess.run(
            [qemu_img, 'convert', '--object',
             f'secret,id=s3key,file={self.secret}', '--object',
             f'secret,id=ek,file={self.key}', '-f', 'raw', '-O', 'raw',
             *options, src, dst], capture_output=True, text=True)
        if res.returncode:
            sys.exit(f'check-series: "{subject}": qemu-img convert failed:\n'
                     f'{res.stdout}{res.stderr}')

    def same(self, path):
        with open(path, 'rb') as a, open(self.data, 'rb') as b:
            return a.read() == b.read()

    def clean(self):
        s3obj.delete_prefix(self.s3, self.name, self.prefix)


def run_driver(build, bucket, ours, qemu_img, scratch, subject):
    """What the state's driver, linked into @qemu_img, can do; returns
    what it did"""
    did = []
    with open(bucket.data, 'rb') as f:
        bucket.s3.put_object(Bucket=bucket.name, Key=bucket.prefix + 'object',
                             Body=f.read())
    reads = [('one object', 'object', False)]
    sealed = ['-o', 'compress=zstd']
    if 's3chain-chunked.c' in ours:
        full_build = os.path.join(build.dir, 'qemu-img')
        bucket.convert(full_build, bucket.data, bucket.url('chunked'),
                       subject)
        bucket.convert(full_build, bucket.data,
                       bucket.url('encrypted', True), subject, sealed)
        reads += [('chunked', 'chunked', False),
                  ('encrypted', 'encrypted', True)]
    if 's3chain-writeback.c' in ours:
        bucket.convert(qemu_img, bucket.data, bucket.url('written'), subject)
        bucket.convert(qemu_img, bucket.data,
                       bucket.url('written-encrypted', True), subject, sealed)
        reads += [('written', 'written', False),
                  ('written encrypted', 'written-encrypted', True)]
    for what, key, encrypted in reads:
        out = os.path.join(scratch, f'{key}.raw')
        bucket.convert(qemu_img, bucket.url(key, encrypted), out, subject)
        if not bucket.same(out):
            sys.exit(f'check-series: "{subject}": its driver read {what} '
                     f'wrongly')
        did.append(what)
    bucket.clean()
    return did


def check_state(build, tree, scratch, subject, bucket):
    ours = our_block_files(tree)
    objects = [build.compile(build.block_object(n), tree, scratch)
               for n in ours]
    did = []
    if objects:
        defined, undefined = symbols(objects)
        missing = sorted(undefined - defined)
        if missing:
            sys.exit(f'check-series: "{subject}": used but not defined in '
                     f'its files: {", ".join(missing)}')
    if 's3chain.c' in ours:
        qemu_img = build.link_qemu_img(objects, scratch)
        if bucket:
            did = run_driver(build, bucket, ours, qemu_img, scratch, subject)
    tests = sorted(n[:-2] for n in os.listdir(os.path.join(tree,
                                                           'tests/unit'))
                   if re.fullmatch(r'test-s3chain-[a-z0-9]+\.c', n))
    for test in tests:
        link = build.last_command(f'tests/unit/{test}')
        binary = os.path.join(scratch, test)
        argv = []
        skip = False
        for arg in link:
            if skip:
                skip = False
                argv.append(binary)
                continue
            if arg == '-o':
                skip = True
            elif arg.startswith(f'tests/unit/{test}.p/'):
                arg = build.compile(arg, tree, scratch)
            argv.append(arg)
        run(argv, cwd=build.dir)
        env = dict(os.environ, G_TEST_SRCDIR=os.path.join(tree, 'tests/unit'),
                   G_TEST_BUILDDIR=scratch)
        res = subprocess.run([binary], env=env, capture_output=True,
                             text=True)
        if res.returncode:
            sys.exit(f'check-series: "{subject}": {test} failed:\n'
                     f'{res.stdout}{res.stderr}')
    return len(ours), len(tests), did


def main():
    pristine, build_dir, patches = map(os.path.abspath, sys.argv[1:4])
    build = Build(build_dir)
    series = sorted(os.path.join(patches, p) for p in os.listdir(patches)
                    if p.endswith('.patch') and not p.startswith('0000-'))
    with tempfile.TemporaryDirectory() as work:
        env_file = os.environ.get('S3CHAIN_TEST_ENV')
        bucket = Bucket(env_file, work) if env_file else None
        tree = os.path.join(work, 'qemu')
        run(['git', 'clone', '-q', pristine, tree])
        env = dict(os.environ, GIT_AUTHOR_NAME='check',
                   GIT_AUTHOR_EMAIL='check@localhost',
                   GIT_COMMITTER_NAME='check',
                   GIT_COMMITTER_EMAIL='check@localhost')
        for patch in series:
            run(['git', 'am', '-q', patch], cwd=tree, env=env)
            subject = subprocess.run(
                ['git', 'log', '-1', '--format=%s'], cwd=tree, check=True,
                capture_output=True, text=True).stdout.strip()
            scratch = tempfile.mkdtemp(dir=work)
            build.trace_header(tree, scratch)
            files, tests, did = check_state(build, tree, scratch, subject,
                                            bucket)
            read = f', read {" / ".join(did)}' if did else ''
            print(f'ok: {os.path.basename(patch)[:4]} {subject}: '
                  f'{files} files, {tests} unit tests{read}', flush=True)
        ours = our_block_files(tree)
        build.trace_header(tree, os.path.join(work, 'final'))
        for name in ours:
            build.compile(build.block_object(name), tree,
                          os.path.join(work, 'final'), thread_safety=True)
        print(f'ok: clang -Wthread-safety: {len(ours)} files', flush=True)


if __name__ == '__main__':
    main()
