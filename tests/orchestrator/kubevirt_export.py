# A stand-in for KubeVirt's virt-exportserver in the tests (no cluster runs
# here): the backup endpoints of a pull-mode VirtualMachineBackup, with the
# same wire format (HTTPS with its own CA, the x-kubevirt-export-token
# header, GET map?offset=&length=&page_size= answering pages of
# {"extents": [{"offset", "length", "type", "description"}], "next_offset"},
# GET data?offset=&length= streaming bytes), served from a real NBD pull
# export of a running libvirt domain, as virt-launcher's NBD client does.
# The faults a test asks for are scripted here: 503s, 410, dying mid-stream,
# a page that ends early, an extent past the disk's end.
#
# Copyright (c) 2026 The s3chain authors
#
# SPDX-License-Identifier: GPL-2.0-or-later

import argparse
import hmac
import http.server
import json
import os
import socketserver
import ssl
import threading
import urllib.parse

import nbd

READ_CHUNK = 256 * 1024
MAP_STEP = 1 << 30
PAGE_SIZE = 512
STATE_HOLE = 1
STATE_ZERO = 2
STATE_DIRTY = 1


def connect(socket: str, export: str, contexts) -> 'nbd.NBD':
    h = nbd.NBD()
    for c in contexts:
        h.add_meta_context(c)
    h.set_export_name(export)
    h.connect_unix(socket)
    return h


def merged(alloc, dirty):
    """What KubeVirt's mergedContextMapper sends: zero and dirty flags"""
    out = []
    a, b = list(alloc), list(dirty)
    i = j = 0
    while i < len(a) and j < len(b):
        (ao, al, af), (bo, bl, bf) = a[i], b[j]
        n = min(al, bl)
        out.append((ao, n, (af & STATE_ZERO) | (bf & STATE_DIRTY)))
        a[i] = (ao + n, al - n, af)
        b[j] = (bo + n, bl - n, bf)
        i += a[i][1] == 0
        j += b[j][1] == 0
    return out


def coalesce(extents):
    out = []
    for off, length, flags in extents:
        if out and out[-1][2] == flags and out[-1][0] + out[-1][1] == off:
            out[-1] = (out[-1][0], out[-1][1] + length, flags)
        else:
            out.append((off, length, flags))
    return out


class Export:
    def __init__(self, args) -> None:
        self.args = args
        self.volumes = dict(v.split('=', 1) for v in args.volume)
        self.data_bytes = 0
        self.data_failures = 0
        self.lock = threading.Lock()
        with open(args.token_file) as f:
            self.token = f.read().strip()

    def extents(self, volume: str, offset: int, length: int):
        contexts = ['base:allocation']
        if self.args.bitmap:
            contexts.append('qemu:dirty-bitmap:' + self.args.bitmap)
        h = connect(self.args.socket, volume, contexts)
        try:
            size = h.get_size()
            if offset >= size:
                raise ValueError(f'offset {offset} is beyond export size')
            end = size if not length or offset + length > size \
                else offset + length
            out = []
            at = offset
            while at < end:
                found = {c: [] for c in contexts}

                def callback(context, start, entries, err):
                    pos = start
                    for k in range(0, len(entries), 2):
                        n = min(entries[k], end - pos)
                        if n <= 0:
                            break
                        found[context].append((pos, n, entries[k + 1]))
                        pos += n
                    return 0

                # a request's length is 32 bits without extended headers
                h.block_status(min(end - at, MAP_STEP), at, callback)
                if not all(found.values()):
                    raise ValueError(f'no extent at {at}')
                if self.args.bitmap:
                    # both contexts, merged over the shorter one's reach
                    run = merged(found['base:allocation'], found[contexts[1]])
                else:
                    run = found['base:allocation']
                out += run
                at = run[-1][0] + run[-1][1]
            return coalesce(out), size
        finally:
            h.shutdown()

    def pread(self, volume: str, offset: int, length: int) -> bytes:
        h = connect(self.args.socket, volume, [])
        try:
            return h.pread(length, offset)
        finally:
            h.shutdown()

    def size(self, volume: str) -> int:
        h = connect(self.args.socket, volume, [])
        try:
            return h.get_size()
        finally:
            h.shutdown()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    server_version = 'virt-exportserver-stand-in'

    def log_message(self, fmt, *args) -> None:
        pass

    def answer(self, status: int, body: bytes,
               kind: str = 'text/plain') -> None:
        self.send_response(status)
        self.send_header('Content-Type', kind)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        ex: Export = self.server.export
        url = urllib.parse.urlparse(self.path)
        query = urllib.parse.parse_qs(url.query)
        token = self.headers.get('x-kubevirt-export-token') or \
            query.get('x-kubevirt-export-token', [''])[0]
        if not hmac.compare_digest(token.encode(), ex.token.encode()):
            return self.answer(401, b'unauthorized')
        if ex.args.gone:
            return self.answer(410, b'export gone')
        parts = url.path.strip('/').split('/')
        if len(parts) != 3 or parts[0] != 'exports' or \
                parts[1] not in ex.volumes or parts[2] not in ('map', 'data'):
            return self.answer(404, b'not found')
        try:
            offset = int(query.get('offset', ['0'])[0])
            length = int(query.get('length', ['0'])[0])
            page = int(query.get('page_size', [str(PAGE_SIZE)])[0])
        except ValueError:
            return self.answer(400, b'invalid query')
        export = ex.volumes[parts[1]]
        if parts[2] == 'map':
            return self.map(ex, export, offset, length, page)
        return self.data(ex, export, offset, length)

    def map(self, ex: Export, export: str, offset: int, length: int,
            page_size: int) -> None:
        try:
            extents, size = ex.extents(export, offset, length)
        except Exception as e:  # what KubeVirt answers: a 500
            return self.answer(500, f'Failed to call map: {e}'.encode())
        page = extents[:page_size]
        next_offset = extents[page_size][0] if len(extents) > page_size \
            else None
        if ex.args.page_ends_early and next_offset is None and \
                len(page) > 1:
            # the last page leaves its last extent out, yet says it is last
            next_offset = page[-1][0] + page[-1][1]
            page = page[:-1]
        if ex.args.extent_past_end and next_offset is None:
            # the last extent runs on 4 MiB past the disk, as data
            o, n, _ = page[-1]
            page[-1] = (o, n + 4 * 1024 * 1024, 1 if ex.args.bitmap else 0)
        desc = {0: 'data', 1: 'hole', 2: 'zero', 3: 'hole,zero'}
        if ex.args.bitmap:
            desc = {0: 'clean', 1: 'dirty', 2: 'zero', 3: 'dirty,zero'}
        body = json.dumps({
            'extents': [{'offset': o, 'length': n, 'type': f,
                         'description': desc[f]} for o, n, f in page],
            'next_offset': next_offset,
        }).encode() + b'\n'
        self.answer(200, body, 'application/json')

    def data(self, ex: Export, export: str, offset: int,
             length: int) -> None:
        with ex.lock:
            if ex.data_failures < ex.args.fail_data:
                ex.data_failures += 1
                return self.answer(503, b'Backup source not connected')
        size = ex.size(export)
        if offset >= size:
            # KubeVirt's Read fails before any byte: the handler aborts
            self.close_connection = True
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        if not length or offset + length > size:
            length = size - offset
        self.send_response(200)
        self.send_header('Content-Type', 'application/octet-stream')
        self.send_header('Transfer-Encoding', 'chunked')
        self.end_headers()
        at = offset
        while at < offset + length:
            n = min(READ_CHUNK, offset + length - at)
            chunk = ex.pread(export, at, n)
            with ex.lock:
                ex.data_bytes += n
                dying = ex.args.die_after and \
                    ex.data_bytes > ex.args.die_after
            if dying:
                # the tunnel to virt-launcher broke mid-stream
                self.wfile.write(b'%x\r\n' % n + chunk[:n // 2])
                self.wfile.flush()
                os._exit(1)
            self.wfile.write(b'%x\r\n' % n + chunk + b'\r\n')
            at += n
        self.wfile.write(b'0\r\n\r\n')


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument('--port', type=int, required=True)
    p.add_argument('--cert', required=True)
    p.add_argument('--key', required=True)
    p.add_argument('--token-file', required=True)
    p.add_argument('--socket', required=True, help="libvirt's NBD socket")
    p.add_argument('--volume', action='append', default=[],
                   help='VOLUME=EXPORT')
    p.add_argument('--bitmap', help='the dirty bitmap of an incremental')
    p.add_argument('--fail-data', type=int, default=0,
                   help='answer the first N data requests with 503')
    p.add_argument('--die-after', type=int, default=0,
                   help='exit mid-stream after this many data bytes')
    p.add_argument('--gone', action='store_true', help='410 to everything')
    p.add_argument('--page-ends-early', action='store_true')
    p.add_argument('--extent-past-end', action='store_true')
    args = p.parse_args()
    server = Server(('127.0.0.1', args.port), Handler)
    server.export = Export(args)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print('ready', flush=True)
    server.serve_forever()


if __name__ == '__main__':
    main()
