#!/usr/bin/env python3
"""Makes the driver's earlier states, for the patches that build it up.

The series adds the driver in three patches: reading images stored as
one object, reading chunked images, then writing and creating them.
block/ holds only the last state; each earlier one is the state after
it with some of it taken out, by anchored edits of a copy of block/:
a cut (from a line that starts a part to the first end after it), a
line dropped, or a text replaced.  Usage:
    stages.py DIR STAGE...
applies the edits of each STAGE, in order, to DIR/block/, a copy of the
repository's block/.  STAGE is "writes" (the driver before it writes) or
"one-object" (then, before it reads chunked images).

An anchor that is no longer found exactly once stops with its stage,
file and text: edit the stage here to match block/.
"""

# SPDX-License-Identifier: GPL-2.0-or-later
import os
import sys


class Stage:
    """The edits of one stage, applied to the files under @root"""

    def __init__(self, name, root):
        self.name = name
        self.root = root

    def text(self, path):
        with open(os.path.join(self.root, path), encoding='utf-8') as f:
            return f.read()

    def write(self, path, text):
        with open(os.path.join(self.root, path), 'w', encoding='utf-8') as f:
            f.write(text)

    def find(self, path, text, anchor):
        if text.count(anchor) != 1:
            sys.exit(f'qemu-glue/stages.py: stage {self.name}: anchor not '
                     f'found exactly once in {path}: {anchor!r}')
        return text.index(anchor)

    def replace(self, path, old, new=''):
        text = self.text(path)
        self.find(path, text, old)
        self.write(path, text.replace(old, new))

    def cut(self, path, start, end):
        """Removes from @start to the first @end after it, both included"""
        text = self.text(path)
        i = self.find(path, text, start)
        j = text.find(end, i)
        if j < 0:
            sys.exit(f'qemu-glue/stages.py: stage {self.name}: no '
                     f'{end!r} after {start!r} in {path}')
        self.write(path, text[:i] + text[j + len(end):])

    def cut_function(self, path, start):
        """Removes the function that @start begins (its comment or its
        first line), and the blank line after it"""
        self.cut(path, start, '\n}\n\n')

    def cut_to_end(self, path, start):
        """Removes from @start to the end of the file, and the blank lines
        before it"""
        text = self.text(path)
        i = self.find(path, text, start)
        self.write(path, text[:i].rstrip('\n') + '\n')

    def append(self, path, text):
        self.write(path, self.text(path) + text)


def writes(s):
    """The driver reads both kinds of image, read-only"""
    c = 'block/s3chain.c'
    s.replace(c, '/*\n * A node is an image: a chunked one, writable, or one '
              'stored as one\n * object, read-only\n */\n',
              '/* A node is an image: a chunked one, or one stored as one '
              'object */\n')
    s.replace(c, '    bool writable;\n    Error **errp;\n',
              '    Error **errp;\n')
    s.replace(c, ' * Reads the node\'s image as the bucket holds it now into '
              '*@image: a\n * chunked one @writable with the writer\'s lock '
              'or read-only without, or\n * one stored as one object, '
              'read-only\n',
              ' * Reads the node\'s image as the bucket holds it now into '
              '*@image: a\n * chunked one, or one stored as one object\n')
    s.replace(c, '                                              bool '
              'writable,\n')
    s.replace(c, '        .writable = writable,\n')
    s.replace(c, '    oc->ret = s3chain_co_open_image(oc->bs, oc->writable, '
              '&s->image,\n                                    oc->errp);',
              '    oc->ret = s3chain_co_open_image(oc->bs, &s->image, '
              'oc->errp);')
    s.cut(c, '    /*\n     * An inactive node (the destination', '     */\n')
    s.replace(c, '        .writable = (flags & BDRV_O_RDWR) && '
              '!(flags & BDRV_O_INACTIVE),\n')
    s.cut(c, '    if (s->opts->scratch && !(flags & BDRV_O_RDWR)) {',
          '    }\n')
    s.cut(c, '    if (s->opts->scratch) {\n', '    } else {\n')
    s.replace(c, '        aio_co_enter(bdrv_get_aio_context(bs),\n'
              '                     qemu_coroutine_create(s3chain_open_entry,'
              ' &oc));\n'
              '        AIO_WAIT_WHILE_UNLOCKED(NULL, oc.ret == '
              '-EINPROGRESS);\n'
              '        if (oc.ret < 0) {\n'
              '            ret = oc.ret;\n'
              '            goto fail;\n'
              '        }\n'
              '    }\n',
              '    aio_co_enter(bdrv_get_aio_context(bs),\n'
              '                 qemu_coroutine_create(s3chain_open_entry, '
              '&oc));\n'
              '    AIO_WAIT_WHILE_UNLOCKED(NULL, oc.ret == -EINPROGRESS);\n'
              '    if (oc.ret < 0) {\n'
              '        ret = oc.ret;\n'
              '        goto fail;\n'
              '    }\n')
    s.replace(c, '    bs->supported_zero_flags = BDRV_REQ_MAY_UNMAP;\n')
    s.cut(c, '/*\n * Migration hands a chunked image',
          's3chain_reload_entry(&oc);\n    }\n}\n\n')
    s.replace(c, '        error_setg(errp, "s3chain: %s cannot become writable '
              'while open; "\n                   "open it writable", '
              's->image->kind->name);',
              '        error_setg(errp, "s3chain: %s is read-only", '
              's->image->kind->name);')
    for start in ('static int coroutine_fn GRAPH_RDLOCK\n'
                  's3chain_co_pwritev(',
                  'static int coroutine_fn GRAPH_RDLOCK\n'
                  's3chain_co_pwrite_zeroes(',
                  '/* A discarded range reads as zeroes',
                  'static int coroutine_fn GRAPH_RDLOCK s3chain_co_flush(',
                  'static int coroutine_fn GRAPH_RDLOCK\n'
                  's3chain_co_truncate(',
                  'static int coroutine_fn s3chain_co_do_create(',
                  'static int coroutine_fn s3chain_co_create(',
                  'static int coroutine_fn\ns3chain_co_create_opts('):
        s.cut_function(c, start)
    s.cut(c, 'static QemuOptsList s3chain_create_opts = {', '};\n\n')
    for line in ('    .create_opts                = &s3chain_create_opts,\n',
                 '    .bdrv_inactivate            = s3chain_inactivate,\n',
                 '    .bdrv_co_invalidate_cache   = '
                 's3chain_co_invalidate_cache,\n',
                 '    .bdrv_co_create             = s3chain_co_create,\n',
                 '    .bdrv_co_create_opts        = s3chain_co_create_opts,\n',
                 '    .bdrv_has_zero_init         = bdrv_has_zero_init_1,\n\n',
                 '    .bdrv_co_pwritev            = s3chain_co_pwritev,\n',
                 '    .bdrv_co_pwrite_zeroes      = s3chain_co_pwrite_zeroes,'
                 '\n',
                 '    .bdrv_co_pdiscard           = s3chain_co_pdiscard,\n',
                 '    .bdrv_co_flush_to_disk      = s3chain_co_flush,\n',
                 '    .bdrv_co_truncate           = s3chain_co_truncate,\n'):
        s.replace(c, line)

    c = 'block/s3chain-image.c'
    s.replace(c, ' * holds in RAM while they are read or written; '
              's3chain-writeback.c\n * writes and commits.  Where a chunk\'s '
              'blocks are stored, and how what\n * loads is checked, is the '
              'image\'s kind: the objects of a chunked image\n * '
              '(s3chain-chunked.c), or ranges of an image stored as one object'
              '\n * (s3chain-object.c).  When the buffer is full, a clean chunk '
              'that\n * nobody uses is dropped, one read through first, or '
              'writers wait for\n * write-back.\n',
              ' * holds in RAM while they are read.  Where a chunk\'s blocks '
              'are stored,\n * and how what loads is checked, is the image\'s '
              'kind: the objects of a\n * chunked image (s3chain-chunked.c), or '
              'ranges of an image stored as one\n * object (s3chain-object.c).'
              '  When the buffer is full, a chunk that\n * nobody uses is '
              'dropped, one read through first.\n')
    for start in ('bool s3chain_image_takes_patches(',
                  'void s3chain_image_supersede_patches_locked(',
                  'void s3chain_image_supersede_locked('):
        s.cut_function(c, start)
    s.replace(c, '    img->hot -= c->hot;\n')
    s.replace(c, ' * A clean chunk that nobody uses, to drop: one read through '
              'if there is\n * one, since a sequential reader does not come '
              'back, else unless\n * @only_read_through the least recently '
              'used.\n',
              ' * A chunk that nobody uses, to drop: one read through if there '
              'is one,\n * since a sequential reader does not come back, else '
              'unless\n * @only_read_through the least recently used.\n')
    s.replace(c, '        if (c->state != CHUNK_CLEAN || c->users) {',
              '        if (c->users) {')
    s.cut(c, '/*\n * Makes room for one more chunk in the buffer',
          '    return 0;\n}\n\n')
    s.replace(c, '/*\n * Loads blocks @todo of pinned chunk @c',
              '/*\n'
              ' * Makes room for one more chunk in the buffer: drops a chunk, '
              'or waits\n'
              ' * for readers to unpin one.\n'
              ' */\n'
              'static void coroutine_fn make_room_locked(S3chainImage *img)\n'
              '{\n'
              '    while (img->cached + chunk_size(img) > img->buffer_size) {\n'
              '        CachedChunk *c = droppable_locked(img, false);\n'
              '\n'
              '        if (c) {\n'
              '            s3chain_image_drop_chunk_locked(img, c);\n'
              '        } else {\n'
              '            qemu_co_queue_wait(&img->room, &img->lock);\n'
              '        }\n'
              '    }\n'
              '}\n'
              '\n'
              '/*\n * Loads blocks @todo of pinned chunk @c')
    s.replace(c, ' * with img->lock held; the blocks are marked loading '
              'meanwhile.  A\n * failure spoils a clean chunk, but not one '
              'holding what was written.\n',
              ' * with img->lock held; the blocks are marked loading '
              'meanwhile.  A\n * failure spoils the chunk.\n')
    s.replace(c, '    } else if (!c->dirty) {\n        c->ret = ret;',
              '    } else {\n        c->ret = ret;')
    s.replace(c, '    c->state = CHUNK_CLEAN;\n')
    s.replace(c, 'int coroutine_fn s3chain_image_get_chunk_locked(S3chainImage '
              '*img,\n'
              '                                                uint64_t index,\n'
              '                                                bool for_write,'
              '\n'
              '                                                bool overwrite,'
              '\n'
              '                                                uint64_t need,\n'
              '                                                CachedChunk '
              '**chunk)',
              '/* Returns chunk @index pinned, with blocks @need loaded */\n'
              'static int coroutine_fn get_chunk_locked(S3chainImage *img, '
              'uint64_t index,\n'
              '                                         uint64_t need, '
              'CachedChunk **chunk)')
    s.replace(c, '        ret = make_room_locked(img);\n'
              '        if (ret < 0) {\n            return ret;\n        }\n',
              '        make_room_locked(img);\n')
    s.replace(c, '        if (overwrite || !img->kind->stored(img, index)) {',
              '        if (!img->kind->stored(img, index)) {')
    s.cut(c, '    if (for_write && !overwrite &&\n', '    }\n')
    s.cut(c, '    /* a load in flight would land on what the caller writes */',
          '    }\n')
    s.cut(c, '    if (overwrite) {\n        c->valid', '    }\n')
    s.replace(c, '            ret = s3chain_image_get_chunk_locked(img, index, '
              'false, false,\n'
              '                                                 need, &c);',
              '            ret = get_chunk_locked(img, index, need, &c);')
    for line in ('    img->lock_key = g_strconcat(how->key, ".lock", NULL);\n',
                 '    img->session = manifest->generation + 1;\n',
                 '    img->superseded = g_ptr_array_new_with_free_func(g_free);'
                 '\n',
                 '    g_ptr_array_unref(img->superseded);\n',
                 '    g_free(img->lock_key);\n'):
        s.replace(c, line)
    s.cut_to_end(c, '/* A scratch image\'s chunk in the bucket goes with the '
                 'image */')
    s.append(c, '\nvoid coroutine_fn s3chain_image_co_close(S3chainImage *img)'
             '\n{\n    s3chain_image_free(img);\n}\n')

    c = 'block/s3chain-chunked.c'
    s.replace(c, ' * s3chain: chunked images, their objects, lock and creation',
              ' * s3chain: chunked images and their objects')
    s.cut(c, ' *\n * One writer at a time:', 'frees its buffer.\n')
    s.replace(c, '    .name = "a chunked image",\n',
              '    .name = "a chunked image",\n    .read_only = true,\n')
    s.cut_function(c, '/* Takes the writer\'s lock object;')
    s.cut_function(c, 'void coroutine_fn s3chain_image_co_unlock(')
    s.cut(c, '    if (how->writable) {\n        ret = take_lock',
          '        }\n    }\n')
    s.cut_to_end(c, '/*\n * Makes @m, a new image\'s manifest, encrypted')

    h = 'block/s3chain.h'
    s.cut(h, 'typedef enum ChunkState {', '} ChunkState;\n\n')
    for line in ('    ChunkState state;\n',
                 '    uint64_t written;           /* blocks written whole '
                 'since loaded */\n',
                 '    uint64_t dirty;             /* blocks written since its '
                 'last upload */\n',
                 '    bool hot;                   /* rewritten since its '
                 'upload: kept */\n',
                 '    char *lock_key;\n',
                 '    bool scratch;               /* in RAM first, never '
                 'committed */\n',
                 '    uint64_t session;           /* generation this writer '
                 'started at */\n',
                 '    bool locked;                /* this writer holds KEY.lock'
                 ' */\n',
                 '    bool manifest_dirty;\n',
                 '    uint64_t serial;            /* uploads made in this '
                 'session */\n',
                 '    GPtrArray *superseded;      /* keys to delete after the '
                 'next commit */\n',
                 '    unsigned hot;               /* chunks kept dirty until '
                 'the commit */\n',
                 '    bool writing_back;          /* between the high and low '
                 'water marks */\n',
                 '    unsigned uploading;         /* background uploads in '
                 'flight */\n',
                 '    int write_back_error;       /* of the last background '
                 'upload */\n'):
        s.replace(h, line)
    s.replace(h, '/* for its loads and upload to end */',
              '/* for its loads to end */')
    s.replace(h, '/*\n * Commits what was written, or for a scratch image '
              'deletes what it\n * spilled, releases the writer\'s lock and '
              'frees @img\n */\n', '/* Closes @img: frees it */\n')
    s.cut(h, '/*\n * Whether stored chunk @ref can take a patch',
          '                                 const S3chainChunkRef *ref);\n')
    s.cut(h, '/* The patches of chunk @index, stored as @ref, are no longer',
          'uint64_t index);\n')
    s.cut(h, '/*\n * Returns chunk @index pinned, with blocks @need loaded.  '
          'With @for_write,', 'CachedChunk **chunk);\n')
    s.replace(h, '/* s3chain-chunked.c: chunked images, their objects, lock and '
              'creation */\n\n/*\n * Opens the chunked image whose manifest is '
              '@how->key, writable (with\n * the writer\'s lock) if '
              '@how->writable\n */\n',
              '/* s3chain-chunked.c: chunked images and their objects */\n\n'
              '/* Opens the chunked image whose manifest is @how->key, '
              'read-only */\n')
    s.cut(h, '/*\n * A scratch image at @key:',
          'void coroutine_fn s3chain_image_co_unlock(S3chainImage *img);\n')

    c = 'block/trace-events'
    s.cut(c, 's3chain_pwritev(', '\n')
    s.cut(c, 's3chain_buffer_full(', '\n')


def one_object(s):
    """The driver reads images stored as one object"""
    c = 'block/s3chain.c'
    s.replace(c, '/* A node is an image: a chunked one, or one stored as one '
              'object */\n', '/* A node is an image stored as one object */\n')
    s.replace(c, ' * Reads the start of the object: its size, ETag and kind in '
              'one request,\n * and with them a manifest whole unless it is '
              'long.  Returns in *@head\n * what it read, @how->head_len '
              'bytes, and in *@etag the ETag.\n */\n'
              'static int coroutine_fn s3chain_co_probe(BlockDriverState *bs, '
              'bool *chunked,\n',
              ' * Reads the start of the object, and with it its size and '
              'ETag.  Returns\n * in *@head what it read, @how->head_len '
              'bytes, and in *@etag the ETag.\n */\n'
              'static int coroutine_fn s3chain_co_probe(BlockDriverState *bs,'
              '\n')
    s.cut(c, '        *chunked = req.content_type_received &&', ');\n')
    s.replace(c, '/*\n * Reads the node\'s image as the bucket holds it now into '
              '*@image: a\n * chunked one, or one stored as one object\n */\n',
              '/* Reads the node\'s image as the bucket holds it now into '
              '*@image */\n')
    s.replace(c, '    bool chunked = false;\n')
    s.replace(c, '    if (!chunked && how.encryption_key) {',
              '    if (how.encryption_key) {')
    s.replace(c, 's3chain_co_probe(bs, &chunked, &how,',
              's3chain_co_probe(bs, &how,')
    s.replace(c, '    if (chunked) {\n'
              '        ret = s3chain_chunked_co_open(bs, s->conn, &how, image, '
              'errp);\n'
              '    } else {\n'
              '        *image = s3chain_object_open(bs, s->conn, &how,\n'
              '                                     s->opts->request_size);\n'
              '    }\n'
              '    if (ret == 0 && s->read_plan) {',
              '    *image = s3chain_object_open(bs, s->conn, &how, '
              's->opts->request_size);\n'
              '    if (s->read_plan) {')

    c = 'block/s3chain-image.c'
    s.replace(c, ' * and how what loads is checked, is the image\'s kind: the '
              'objects of a\n * chunked image (s3chain-chunked.c), or ranges of '
              'an image stored as one\n * object (s3chain-object.c).  When the '
              'buffer is full, a chunk that\n * nobody uses is dropped, one '
              'read through first.\n',
              ' * and how what loads is checked, is the image\'s kind: ranges '
              'of an image\n * stored as one object (s3chain-object.c).  When '
              'the buffer is full, a\n * chunk that nobody uses is dropped, one '
              'read through first.\n')
    s.replace(c, '    s3chain_chunk_ref_clear(&load.ref);\n')

    h = 'block/s3chain.h'
    s.replace(h, '/*\n * Both kinds of image are read through the same buffer: a '
              'chunked image\n * (s3chain-chunked.c), whose chunks are objects '
              'of their own, and an\n * image stored as one object '
              '(s3chain-object.c), whose chunks are ranges\n * of it.  What '
              'differs is a kind, a table of where a chunk\'s blocks come\n * '
              'from and how what came is checked.\n */\n',
              '/*\n * An image is read through a buffer of chunks.  Where a '
              'chunk\'s blocks\n * come from, and how what came is checked, is '
              'the image\'s kind, a table:\n * for an image stored as one '
              'object (s3chain-object.c), its chunks are\n * ranges of it.\n'
              ' */\n')
    s.cut(h, '    /* a chunked image\'s entry for the chunk, as it was when',
          '    S3chainChunkRef ref;\n')
    s.replace(h, '    /* a chunked image\'s; for one object, only its size and '
              'chunk size */\n', '    /* only its size and chunk size */\n')


STAGES = {
    'writes': writes,
    'one-object': one_object,
}


def main():
    root = sys.argv[1]
    for name in sys.argv[2:]:
        STAGES[name](Stage(name, root))


if __name__ == '__main__':
    main()
