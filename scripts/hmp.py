#!/usr/bin/env python3
"""Runs HMP command lines on a QEMU through its QMP socket: the demo's
"guest", writing to the VM's disks with qemu-io."""

# SPDX-License-Identifier: GPL-2.0-or-later
import json
import socket
import sys


def main() -> int:
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(sys.argv[1])
    f = sock.makefile('rw')
    f.readline()
    f.write('{"execute": "qmp_capabilities"}\n')
    f.flush()
    f.readline()
    for line in sys.argv[2:]:
        f.write(json.dumps({'execute': 'human-monitor-command',
                            'arguments': {'command-line': line}}) + '\n')
        f.flush()
        while True:
            reply = json.loads(f.readline())
            if 'return' in reply or 'error' in reply:
                break
        out = reply['return'] if 'return' in reply else reply['error']['desc']
        if 'error' in reply or 'failed' in out or 'Error' in out:
            print(f'{line}: {out}', file=sys.stderr)
            return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
