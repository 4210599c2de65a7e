"""The GETs a command makes through the s3chain driver, for the tests and
the benchmarks: a qemu-img wrapper (S3CHAIN_QEMU_IMG) that enables the
driver's s3chain_request trace, and a reader of what it traced."""

# SPDX-License-Identifier: GPL-2.0-or-later

import os
from typing import List, Tuple


def traced_qemu_img(qemu_img: str, workdir: str) -> Tuple[str, str]:
    """A script in @workdir that runs @qemu_img tracing its requests into
    TRACES/SUBCOMMAND.PID; returns the script and TRACES, made empty"""
    traces = os.path.join(workdir, 'traces')
    os.makedirs(traces)
    wrapper = os.path.join(workdir, 'qemu-img-traced')
    with open(wrapper, 'w', encoding='utf-8') as f:
        f.write(f'#!/bin/sh\nexec {qemu_img} -T enable=s3chain_request,'
                f'file={traces}/"$1".$$ "$@"\n')
    os.chmod(wrapper, 0o700)
    return wrapper, traces


def gets(trace: str) -> List[Tuple[str, int, int]]:
    """The GETs in trace file @trace: (s3://BUCKET/KEY, offset, length)"""
    found = []
    with open(trace, encoding='utf-8') as f:
        for line in f:
            words = line.split()
            if 'GET' in words:
                offset, length = map(int, words[-3].split('+'))
                found.append((words[words.index('GET') + 1], offset, length))
    return found
