/*
 * pull.c: the pull-mode copier: maps what a disk's NBD export at the
 * backup's instant holds (or what its dirty bitmap marks), then copies it
 * into the sidecar's export of the new image, with libnbd, many requests
 * in flight on both sides; or copies what KubeVirt's export server maps,
 * read over HTTPS (export.c)
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "s3chain.h"

#include <errno.h>
#include <libnbd.h>
#include <poll.h>
#include <string.h>

#define PIECE_SIZE (2 * 1024 * 1024)
/* One block-status request covers at most this much of the disk */
#define MAP_STEP (1024ULL * 1024 * 1024)
#define POLL_MS 500
/* Neither side moved for this long: the copy is stuck */
#define STALL_LIMIT_S 300
#define BASE_ALLOCATION "base:allocation"
/* the flag of a dirty extent in a qemu:dirty-bitmap context */
#define DIRTY_FLAG 1

typedef enum PieceState {
    PIECE_FREE,
    PIECE_READING,
    PIECE_READ,
    PIECE_WRITING,
    PIECE_WRITTEN,
} PieceState;

typedef struct Piece {
    PieceState state;
    uint64_t offset;
    uint32_t length;
    bool zero;
    char *buf;
    int error;                  /* errno of a failed read or write */
    GError *failure;            /* of a failed read of an export */
} Piece;

typedef struct Copy {
    S3cPullDisk *disk;
    struct nbd_handle *source;  /* NULL when disk->export reads it */
    struct nbd_handle *target;
    GArray *extents;            /* of S3cExtent, ascending */
} Copy;

/* What one block-status walk of a context has found so far */
typedef struct MapWalk {
    const char *context;
    uint64_t reached;           /* where the replies so far end */
    GArray *runs;               /* of S3cExtent; zero = the flags matched */
    uint32_t flags_mask;        /* a run is kept when flags & mask == want */
    uint32_t flags_want;
} MapWalk;

static bool nbd_failed(GError **err, int code, const char *fmt, ...)
    G_GNUC_PRINTF(3, 4);

static bool nbd_failed(GError **err, int code, const char *fmt, ...)
{
    va_list ap;
    g_autofree char *what = NULL;

    va_start(ap, fmt);
    what = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error(err, S3C_ERROR, code, "%s: %s", what,
                nbd_get_error() ? nbd_get_error()
                                : g_strerror(nbd_get_errno()));
    return false;
}

/* Says so when @h's peer went away, in words a user acts on */
static bool nbd_gone(struct nbd_handle *h, GError **err, int code,
                     const char *disk, const char *peer, const char *why)
{
    if (nbd_aio_is_closed(h) != 1 && nbd_aio_is_dead(h) != 1) {
        return false;
    }
    g_set_error(err, S3C_ERROR, code,
                "disk %s: %s closed its NBD connection mid-backup (%s)", disk,
                peer, why);
    return true;
}

/* The source's end, as nbd_gone words it */
static bool source_gone(Copy *c, GError **err)
{
    return nbd_gone(c->source, err, c->disk->source_error, c->disk->name,
                    c->disk->source_peer,
                    c->disk->source_error == S3C_EXIT_VM_UNREACHABLE
                    ? "the domain stopped, or its backup job ended"
                    : "the sidecar stopped");
}

static bool target_gone(Copy *c, GError **err)
{
    return nbd_gone(c->target, err, S3C_EXIT_TRANSIENT, c->disk->name,
                    "the sidecar", "the sidecar stopped");
}

/* A failure to reach it is exit code @code */
static struct nbd_handle *connect_export(const char *socket,
                                         const char *export,
                                         const char *const *contexts,
                                         const char *who, int code,
                                         GError **err)
{
    struct nbd_handle *h = nbd_create();

    if (!h) {
        nbd_failed(err, S3C_EXIT_INTERNAL, "libnbd");
        return NULL;
    }
    for (size_t i = 0; contexts && contexts[i]; i++) {
        nbd_add_meta_context(h, contexts[i]);
    }
    if (nbd_set_export_name(h, export) < 0 ||
        nbd_connect_unix(h, socket) < 0) {
        nbd_failed(err, code, "cannot reach %s's NBD export %s at %s", who,
                   export, socket);
        nbd_close(h);
        return NULL;
    }
    for (size_t i = 0; contexts && contexts[i]; i++) {
        if (nbd_can_meta_context(h, contexts[i]) != 1) {
            g_set_error(err, S3C_ERROR, code,
                        "%s's NBD export %s does not offer %s", who, export,
                        contexts[i]);
            nbd_close(h);
            return NULL;
        }
    }
    return h;
}

static int map_extents(void *opaque, const char *context, uint64_t offset,
                       uint32_t *entries, size_t n, int *error)
{
    MapWalk *w = opaque;

    if (strcmp(context, w->context)) {
        return 0;
    }
    for (size_t i = 0; i + 1 < n; i += 2) {
        S3cExtent run = { .offset = offset, .length = entries[i] };

        if ((entries[i + 1] & w->flags_mask) == w->flags_want) {
            g_array_append_val(w->runs, run);
        }
        offset += entries[i];
    }
    w->reached = offset;
    return 0;
}

/*
 * The runs of [@from, @to) whose flags in @context match: adjacent ones
 * merged, the last clipped at @to
 */
static bool walk(Copy *c, const char *context, uint32_t mask, uint32_t want,
                 uint64_t from, uint64_t to, GArray *out, GError **err)
{
    MapWalk w = {
        .context = context, .flags_mask = mask, .flags_want = want,
        .runs = g_array_new(false, false, sizeof(S3cExtent)),
    };
    uint64_t at = from;
    bool ok = true;

    while (ok && at < to) {
        w.reached = at;
        g_array_set_size(w.runs, 0);
        if (nbd_block_status(c->source, MIN(to - at, MAP_STEP), at,
                             (nbd_extent_callback) {
                                 .callback = map_extents, .user_data = &w },
                             0) < 0) {
            ok = nbd_failed(err, c->disk->source_error,
                            "disk %s: mapping %s at %" G_GUINT64_FORMAT,
                            c->disk->name, context, at);
            break;
        }
        if (w.reached <= at) {
            g_set_error(err, S3C_ERROR, S3C_EXIT_DAMAGED,
                        "disk %s: %s answered no extent of %s at %"
                        G_GUINT64_FORMAT, c->disk->name, c->disk->source_peer,
                        context, at);
            ok = false;
            break;
        }
        for (guint i = 0; i < w.runs->len; i++) {
            S3cExtent run = g_array_index(w.runs, S3cExtent, i);
            S3cExtent *last = out->len ? &g_array_index(out, S3cExtent,
                                                     out->len - 1) : NULL;

            if (run.offset >= to) {
                break;
            }
            run.length = MIN(run.length, to - run.offset);
            if (last && last->offset + last->length == run.offset) {
                last->length += run.length;
            } else {
                g_array_append_val(out, run);
            }
        }
        at = w.reached;
    }
    g_array_unref(w.runs);
    return ok;
}

static void count_bytes(Copy *c)
{
    for (guint i = 0; i < c->extents->len; i++) {
        c->disk->bytes_total += g_array_index(c->extents, S3cExtent,
                                              i).length;
    }
}

/*
 * What to copy.  A full backup copies the data the disk holds: its
 * target is a new, empty image.  An incremental one copies each dirty
 * run, its zero parts as write-zeroes, for its parent may hold data
 * there.
 */
static bool map_disk(Copy *c, GError **err)
{
    S3cPullDisk *d = c->disk;
    int64_t size = nbd_get_size(c->source);
    g_autoptr(GArray) dirty = g_array_new(false, false, sizeof(S3cExtent));

    if (size < 0) {
        return nbd_failed(err, d->source_error, "disk %s", d->name);
    }
    if (!d->dirty_context) {
        if (!walk(c, BASE_ALLOCATION,
                  LIBNBD_STATE_HOLE | LIBNBD_STATE_ZERO, 0, 0, size,
                  c->extents, err)) {
            return false;
        }
    } else if (!walk(c, d->dirty_context, DIRTY_FLAG, DIRTY_FLAG, 0,
                     size, dirty, err)) {
        return false;
    }
    for (guint i = 0; i < dirty->len; i++) {
        S3cExtent run = g_array_index(dirty, S3cExtent, i);
        g_autoptr(GArray) zeroes = g_array_new(false, false, sizeof(S3cExtent));
        uint64_t at = run.offset;

        if (!walk(c, BASE_ALLOCATION, LIBNBD_STATE_ZERO,
                  LIBNBD_STATE_ZERO, run.offset, run.offset + run.length,
                  zeroes, err)) {
            return false;
        }
        for (guint j = 0; j <= zeroes->len; j++) {
            S3cExtent *z = j < zeroes->len ? &g_array_index(zeroes, S3cExtent, j)
                                        : NULL;
            uint64_t end = z ? z->offset : run.offset + run.length;

            if (end > at) {
                S3cExtent data = { .offset = at, .length = end - at };

                g_array_append_val(c->extents, data);
            }
            if (z) {
                S3cExtent zero = *z;

                zero.zero = true;
                g_array_append_val(c->extents, zero);
                at = z->offset + z->length;
            }
        }
    }
    count_bytes(c);
    return true;
}

static int piece_read(void *opaque, int *error)
{
    Piece *p = opaque;

    p->error = *error;
    p->state = PIECE_READ;
    return 1;
}

static void piece_fetched(void *opaque, GError *failure)
{
    Piece *p = opaque;

    p->failure = failure;
    p->state = PIECE_READ;
}

static int piece_written(void *opaque, int *error)
{
    Piece *p = opaque;

    p->error = *error;
    p->state = PIECE_WRITTEN;
    return 1;
}

static void watch(struct nbd_handle *h, struct pollfd *fd)
{
    unsigned dir = nbd_aio_get_direction(h);

    fd->fd = nbd_aio_get_fd(h);
    fd->events = (dir & LIBNBD_AIO_DIRECTION_READ ? POLLIN : 0) |
                 (dir & LIBNBD_AIO_DIRECTION_WRITE ? POLLOUT : 0);
    fd->revents = 0;
}

/*
 * Lets libnbd move both connections along (or libcurl the export's
 * reads, and libnbd the target), for up to @timeout_ms
 */
static bool poll_both(Copy *c, int timeout_ms, GError **err)
{
    struct nbd_handle *handles[] = { c->source, c->target };
    struct pollfd fds[2];

    watch(c->target, &fds[1]);
    if (c->disk->export) {
        if (!s3c_export_wait(c->disk->export, &fds[1], timeout_ms, err)) {
            return false;
        }
    } else {
        watch(c->source, &fds[0]);
        if (poll(fds, 2, timeout_ms) < 0 && errno != EINTR) {
            g_set_error(err, S3C_ERROR, S3C_EXIT_INTERNAL, "poll: %s",
                        g_strerror(errno));
            return false;
        }
    }
    for (int i = c->disk->export ? 1 : 0; i < 2; i++) {
        int rc = 0;

        if (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) {
            rc = nbd_aio_notify_read(handles[i]);
        } else if (fds[i].revents & POLLOUT) {
            rc = nbd_aio_notify_write(handles[i]);
        }
        if (rc < 0) {
            int code = i ? S3C_EXIT_TRANSIENT : c->disk->source_error;
            const char *peer = i ? "the sidecar" : c->disk->source_peer;

            return (i ? target_gone(c, err) : source_gone(c, err)) ||
                   nbd_failed(err, code, "disk %s: %s's NBD connection",
                              c->disk->name, peer);
        }
    }
    return true;
}

typedef struct Progress {
    uint64_t done;
    uint64_t total;
} Progress;

/* Starts what piece @p has next to do; false if libnbd refused it */
static bool piece_advance(Copy *c, Piece *p, GError **err)
{
    bool reading = p->state != PIECE_READ && !p->zero;
    int64_t cookie;

    if (p->state == PIECE_READ) {
        cookie = nbd_aio_pwrite(c->target, p->buf, p->length, p->offset,
                                (nbd_completion_callback) {
                                    .callback = piece_written,
                                    .user_data = p }, 0);
    } else if (p->zero) {
        cookie = nbd_aio_zero(c->target, p->length, p->offset,
                              (nbd_completion_callback) {
                                  .callback = piece_written,
                                  .user_data = p }, 0);
    } else if (c->disk->export) {
        s3c_export_read(c->disk->export, p->buf, p->length, p->offset,
                        piece_fetched, p);
        cookie = 0;
    } else {
        cookie = nbd_aio_pread(c->source, p->buf, p->length, p->offset,
                               (nbd_completion_callback) {
                                   .callback = piece_read,
                                   .user_data = p }, 0);
    }
    if (cookie < 0) {
        int code = reading ? c->disk->source_error : S3C_EXIT_TRANSIENT;

        return (reading ? source_gone(c, err) : target_gone(c, err)) ||
               nbd_failed(err, code, "disk %s at %" G_GUINT64_FORMAT ": %s",
                          c->disk->name, p->offset,
                          reading ? "reading its source" : "writing the image");
    }
    p->state = p->state == PIECE_READ || p->zero ? PIECE_WRITING
                                                  : PIECE_READING;
    return true;
}

/* @c may be one a failure left unset: no disk, no handles */
static void close_handles(Copy *c)
{
    if (c->disk && c->disk->export) {
        s3c_export_cancel(c->disk->export);
    }
    if (c->target) {
        nbd_shutdown(c->target, 0);
        nbd_close(c->target);
        c->target = NULL;
    }
    if (c->source) {
        nbd_close(c->source);
        c->source = NULL;
    }
}

static bool copy_disk(Copy *c, guint pieces, Progress *progress,
                      GError **err)
{
    g_autofree Piece *slots = g_new0(Piece, pieces);
    int64_t start = g_get_monotonic_time();
    int64_t last_move = start;
    guint next = 0;             /* the extent being cut into pieces */
    uint64_t cut = 0;           /* how far into it */
    bool ok = true;

    for (;;) {
        guint busy = 0;

        for (guint i = 0; ok && i < pieces; i++) {
            Piece *p = &slots[i];

            if (p->failure) {
                g_propagate_error(err, g_steal_pointer(&p->failure));
                ok = false;
                break;
            }
            if (p->error) {
                g_set_error(err, S3C_ERROR, p->state == PIECE_READ
                            ? c->disk->source_error : S3C_EXIT_TRANSIENT,
                            "disk %s: %s at %" G_GUINT64_FORMAT " failed: %s",
                            c->disk->name, p->state == PIECE_READ
                            ? "reading its source" : "writing the image",
                            p->offset, g_strerror(p->error));
                ok = false;
                break;
            }
            if (p->state == PIECE_WRITTEN) {
                c->disk->bytes_done += p->length;
                progress->done += p->length;
                last_move = g_get_monotonic_time();
                p->state = PIECE_FREE;
            }
            if (p->state == PIECE_FREE && next < c->extents->len) {
                S3cExtent *e = &g_array_index(c->extents, S3cExtent, next);

                p->offset = e->offset + cut;
                p->length = MIN(e->length - cut, PIECE_SIZE);
                p->zero = e->zero;
                if (!p->zero && !p->buf) {
                    p->buf = g_malloc(PIECE_SIZE);
                }
                cut += p->length;
                if (cut == e->length) {
                    next++;
                    cut = 0;
                }
                ok = piece_advance(c, p, err);
            } else if (p->state == PIECE_READ) {
                last_move = g_get_monotonic_time();
                ok = piece_advance(c, p, err);
            }
            busy += p->state != PIECE_FREE;
        }
        if (!ok || (!busy && next == c->extents->len)) {
            break;
        }
        s3c_output_progress(progress->done, progress->total);
        if (s3c_interrupted) {
            g_set_error(err, S3C_ERROR, S3C_EXIT_INTERRUPTED,
                        "interrupted by a signal; the backup was cancelled");
            ok = false;
            break;
        }
        if (g_get_monotonic_time() - last_move >
            STALL_LIMIT_S * G_USEC_PER_SEC) {
            g_set_error(err, S3C_ERROR, S3C_EXIT_TRANSIENT,
                        "disk %s: nothing moved for %d s", c->disk->name,
                        STALL_LIMIT_S);
            ok = false;
            break;
        }
        ok = poll_both(c, POLL_MS, err);
    }
    if (!ok) {
        /* closing retires what is in flight, calling back into @slots */
        close_handles(c);
    }
    for (guint i = 0; i < pieces; i++) {
        g_free(slots[i].buf);
        g_clear_error(&slots[i].failure);
    }
    c->disk->seconds = (g_get_monotonic_time() - start) / 1e6;
    return ok;
}

static void copy_close(Copy *c)
{
    close_handles(c);
    if (c->extents) {
        g_array_unref(c->extents);
    }
}

bool s3c_pull_copy(S3cPullDisk *disks, guint n, uint64_t memory,
                   GError **err)
{
    g_autofree Copy *copies = g_new0(Copy, n);
    guint pieces = MAX(1, memory / PIECE_SIZE);
    Progress progress = { 0 };
    bool ok = true;

    for (guint i = 0; ok && i < n; i++) {
        Copy *c = &copies[i];
        const char *contexts[] = {
            BASE_ALLOCATION, disks[i].dirty_context, NULL,
        };

        c->disk = &disks[i];
        if (!c->disk->source_peer) {
            c->disk->source_peer = "the VM";
            c->disk->source_error = S3C_EXIT_VM_UNREACHABLE;
        }
        /* an export's map is read already; an NBD source's, below */
        c->extents = c->disk->export
                     ? g_array_ref(c->disk->extents)
                     : g_array_new(false, false, sizeof(S3cExtent));
        if (!c->disk->export) {
            c->source = connect_export(disks[i].source_socket,
                                       disks[i].source_export, contexts,
                                       c->disk->source_peer,
                                       c->disk->source_error, err);
            ok = c->source != NULL;
        }
        c->target = ok ? connect_export(disks[i].target_socket,
                                        disks[i].target_export, NULL,
                                        "the sidecar", S3C_EXIT_TRANSIENT,
                                        err)
                       : NULL;
        if (c->target && c->disk->export) {
            count_bytes(c);
        }
        ok = c->target && (c->disk->export || map_disk(c, err));
        progress.total += disks[i].bytes_total;
    }
    for (guint i = 0; ok && i < n; i++) {
        ok = copy_disk(&copies[i], pieces, &progress, err);
    }
    if (ok) {
        s3c_output_progress(progress.total, progress.total);
    }
    for (guint i = 0; i < n; i++) {
        copy_close(&copies[i]);
    }
    return ok;
}
