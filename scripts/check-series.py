#!/usr/bin/env python3
"""Checks that the QEMU series in patches/ is bisectable: applied one
patch at a time to the pinned QEMU, each state compiles every s3chain
file it holds with the full build's own flags (-Werror), keeps the
driver's symbols resolved among its own files, and builds and passes
each unit test it holds.  Then the whole series' s3chain files compile
with clang's -Wthread-safety, which checks QEMU's graph lock
annotations (gcc ignores them).

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
import re
import shlex
import subprocess
import sys
import tempfile


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


def check_state(build, tree, scratch, subject):
    ours = our_block_files(tree)
    objects = [build.compile(build.block_object(n), tree, scratch)
               for n in ours]
    if objects:
        defined, undefined = symbols(objects)
        missing = sorted(undefined - defined)
        if missing:
            sys.exit(f'check-series: "{subject}": used but not defined in '
                     f'its files: {", ".join(missing)}')
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
    return len(ours), len(tests)


def main():
    pristine, build_dir, patches = map(os.path.abspath, sys.argv[1:4])
    build = Build(build_dir)
    series = sorted(os.path.join(patches, p) for p in os.listdir(patches)
                    if p.endswith('.patch') and not p.startswith('0000-'))
    with tempfile.TemporaryDirectory() as work:
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
            files, tests = check_state(build, tree, scratch, subject)
            print(f'ok: {os.path.basename(patch)[:4]} {subject}: '
                  f'{files} files, {tests} unit tests', flush=True)
        ours = our_block_files(tree)
        build.trace_header(tree, os.path.join(work, 'final'))
        for name in ours:
            build.compile(build.block_object(name), tree,
                          os.path.join(work, 'final'), thread_safety=True)
        print(f'ok: clang -Wthread-safety: {len(ours)} files', flush=True)


if __name__ == '__main__':
    main()
