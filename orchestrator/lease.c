/*
 * lease.c: the VM's lock, a lease in the bucket that its holder renews
 * while it works and that any host takes over once it has run out
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "s3chain.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Without conditional PUTs: how long a new lock must stay ours to hold */
#define SETTLE_US (2 * G_USEC_PER_SEC)
/* The most a lock object may say, and how long a lease may be */
#define LOCK_MAX_BYTES 4096
#define LEASE_MAX_S (7 * 86400)

struct S3cLease {
    /*
     * The repository, with requests short enough that a renewal never
     * outlasts a quarter of the lease, and the renewer retries instead
     */
    S3cRepo repo_for_lease;
    const S3cRepo *repo;        /* &repo_for_lease */
    char *key;
    char *vm;
    char *body;                 /* this holder's lock, as put */
    char *owner;                /* its random identity */
    int64_t lease_s;
    bool conditional;           /* the server honours If-Match */
    GThread *renewer;
    GMutex renewing;            /* one renewal at a time */
    GMutex lock;                /* guards what follows */
    GCond wake;
    char *etag;                 /* of the version we put last */
    int64_t renewed_us;         /* monotonic: the last good renewal's start */
    char *lost;                 /* why the lease is not ours, or NULL */
    bool stop;
};

static char *lock_key(const S3cCatalog *cat)
{
    return g_strconcat(cat->dir, "lock", NULL);
}

static bool bad_lock(GError **err, const char *where, const char *vm,
                     const char *what)
{
    g_set_error(err, S3C_ERROR, S3C_EXIT_DAMAGED,
                "%s: %s, so it is no lock of s3chain's; if no s3chain "
                "command works on VM %s, delete that object", where, what,
                vm);
    return false;
}

static bool read_holder(const char *where, const char *vm, json_object *doc,
                        S3cLockHolder *h, GError **err)
{
    static const char *const ints[] = { "pid", "since", NULL };
    json_object *v;

    if (!json_object_is_type(doc, json_type_object)) {
        return bad_lock(err, where, vm, "it is not a JSON object");
    }
    if (!json_object_object_get_ex(doc, "host", &v) ||
        !json_object_is_type(v, json_type_string) ||
        !json_object_get_string_len(v)) {
        return bad_lock(err, where, vm, "its \"host\" is not a name");
    }
    h->host = json_object_get_string(v);
    for (const char *const *name = ints; *name; name++) {
        if (!json_object_object_get_ex(doc, *name, &v) ||
            !json_object_is_type(v, json_type_int) ||
            json_object_get_int64(v) <= 0) {
            g_autofree char *what = g_strdup_printf(
                "its \"%s\" is not a positive integer", *name);
            return bad_lock(err, where, vm, what);
        }
    }
    h->pid = s3c_json_int(doc, "pid");
    h->since = s3c_json_int(doc, "since");
    h->owner = NULL;
    h->lease_s = 0;
    if (json_object_object_get_ex(doc, "lease", &v)) {
        if (!json_object_is_type(v, json_type_int) ||
            json_object_get_int64(v) <= 0 ||
            json_object_get_int64(v) > LEASE_MAX_S) {
            return bad_lock(err, where, vm, "its \"lease\" is not a number of "
                            "seconds up to a week");
        }
        h->lease_s = json_object_get_int64(v);
        if (!json_object_object_get_ex(doc, "owner", &v) ||
            !json_object_is_type(v, json_type_string)) {
            return bad_lock(err, where, vm, "its \"owner\" is not a string");
        }
        h->owner = json_object_get_string(v);
    }
    return true;
}

bool s3c_lock_parse(const char *where, const char *vm, const GString *body,
                    json_object **doc, S3cLockHolder *holder, GError **err)
{
    *doc = body->len <= LOCK_MAX_BYTES ? json_tokener_parse(body->str)
                                       : NULL;
    if (!*doc) {
        return bad_lock(err, where, vm, body->len > LOCK_MAX_BYTES
                                        ? "it is larger than any lock"
                                        : "it is not JSON");
    }
    if (!read_holder(where, vm, *doc, holder, err)) {
        g_clear_pointer(doc, json_object_put);
        return false;
    }
    return true;
}

/* A process of this host that is gone for sure */
static bool holder_is_dead(const S3cLockHolder *h)
{
    return !strcmp(h->host, g_get_host_name()) && h->pid <= G_MAXINT &&
           kill(h->pid, 0) < 0 && errno == ESRCH;
}

/*
 * Why the lock @h, last written @age seconds ago by the bucket's clock,
 * may be taken over; NULL if it may not
 */
static char *takeover_reason(const S3cLockHolder *h, int64_t age,
                             const S3cLeaseOptions *opts)
{
    if (holder_is_dead(h)) {
        return g_strdup_printf("its process %" G_GINT64_FORMAT " is gone",
                               h->pid);
    }
    if (h->lease_s && age > h->lease_s) {
        return g_strdup_printf("its lease ran out %" G_GINT64_FORMAT
                               " s ago", age - h->lease_s);
    }
    if (!h->lease_s && opts->break_stale && age > opts->stale_after) {
        return g_strdup_printf("it is %" G_GINT64_FORMAT " s old and "
                               "--break-stale-lock was given", age);
    }
    return NULL;
}

static void refuse(GError **err, const S3cLease *l, const S3cLockHolder *h,
                   int64_t age)
{
    g_autofree char *until = h->lease_s
        ? g_strdup_printf("its lease runs out in %" G_GINT64_FORMAT " s "
                          "unless renewed", MAX(h->lease_s - age, 0) + 1)
        : g_strdup("it was written by an s3chain without leases: if that "
                   "command is gone, run again with --break-stale-lock");

    g_set_error(err, S3C_ERROR, S3C_EXIT_LOCKED,
                "VM %s is locked by another s3chain command (host %s, pid %"
                G_GINT64_FORMAT ", for %" G_GINT64_FORMAT " s); %s", l->vm,
                h->host, h->pid, MAX(time(NULL) - h->since, 0), until);
}

/* Seconds since the object was last written, by the bucket's clock */
static int64_t stamp_age(const S3cStamp *stamp)
{
    int64_t now = stamp->server_time >= 0 ? stamp->server_time
                                          : (int64_t)time(NULL);

    return stamp->last_modified >= 0 ? now - stamp->last_modified : 0;
}

typedef enum Attempt {
    HELD,
    TAKEN,                      /* by another command: @err says by whom */
    AGAIN,                      /* the lock changed while we looked */
    NO_CONDITIONS,
    FAILED,
} Attempt;

/*
 * Reads the lock and decides whether it may be taken over: true with the
 * reason in *@reason and the version read in @stamp, or with *@reason
 * NULL when there is none; false with @err set when it is held, can't be
 * read, or is no lock
 */
static bool judge_lock(S3cLease *l, const S3cLeaseOptions *opts,
                       S3cStamp *stamp, char **reason, GError **err)
{
    g_autoptr(GString) body = NULL;
    g_autoptr(GError) local = NULL;
    g_autofree char *why = NULL;
    g_autofree char *where = NULL;
    json_object *doc = NULL;
    S3cLockHolder h;
    bool ok;

    *reason = NULL;
    if (!s3c_s3_get_stamped(l->repo, l->key, &body, stamp, &local)) {
        if (local) {
            g_propagate_error(err, g_steal_pointer(&local));
            return false;
        }
        return true;            /* there is none */
    }
    where = g_strdup_printf("s3://%s/%s", l->repo->bucket, l->key);
    ok = s3c_lock_parse(where, l->vm, body, &doc, &h, err);
    if (ok) {
        why = takeover_reason(&h, stamp_age(stamp), opts);
        if (!why) {
            refuse(err, l, &h, stamp_age(stamp));
            ok = false;
        } else {
            *reason = g_strdup_printf("host %s, pid %" G_GINT64_FORMAT
                                      ": %s", h.host, h.pid, why);
        }
    }
    json_object_put(doc);
    return ok;
}

/* A lock held by another command is TAKEN; one that can't be read FAILED */
static Attempt judged_out(GError **local, GError **err)
{
    Attempt outcome = (*local)->code == S3C_EXIT_LOCKED ? TAKEN : FAILED;

    g_propagate_error(err, g_steal_pointer(local));
    return outcome;
}

/* The lock exists: takes it over if its holder is gone */
/* Says whose lock this command took, and why it could */
static void took_over(const S3cLease *l, const char *reason)
{
    s3c_output_warning("took over the lock of VM %s from %s", l->vm, reason);
}

static Attempt try_take_over(S3cLease *l, const S3cLeaseOptions *opts,
                             GError **err)
{
    g_auto(S3cStamp) stamp = S3C_STAMP_INIT;
    g_autoptr(GError) local = NULL;
    g_autofree char *reason = NULL;
    g_autofree char *seen = NULL;

    if (!judge_lock(l, opts, &stamp, &reason, &local)) {
        return judged_out(&local, err);
    }
    if (!reason) {
        return AGAIN;           /* released meanwhile */
    }
    seen = g_strdup(stamp.etag ? stamp.etag : "*");
    /* replaces exactly the version read, or nothing */
    switch (s3c_s3_put_if(l->repo, l->key, l->body, strlen(l->body), seen,
                          &stamp, err)) {
    case S3C_PUT_DONE:
        took_over(l, reason);
        l->etag = g_strdup(stamp.etag);
        return HELD;
    case S3C_PUT_PRECONDITION_FAILED:
        return AGAIN;
    case S3C_PUT_UNCONDITIONAL_ONLY:
        return NO_CONDITIONS;
    default:
        return FAILED;
    }
}

/* With conditional PUTs: create, else take over from a gone holder */
static Attempt take_conditionally(S3cLease *l, const S3cLeaseOptions *opts,
                                  GError **err)
{
    g_auto(S3cStamp) stamp = S3C_STAMP_INIT;

    switch (s3c_s3_put_if(l->repo, l->key, l->body, strlen(l->body), "*",
                          &stamp, err)) {
    case S3C_PUT_DONE:
        l->etag = g_strdup(stamp.etag);
        return HELD;
    case S3C_PUT_PRECONDITION_FAILED:
        return try_take_over(l, opts, err);
    case S3C_PUT_UNCONDITIONAL_ONLY:
        return NO_CONDITIONS;
    default:
        return FAILED;
    }
}

/* This holder's lock is the one in the bucket */
static bool still_ours(S3cLease *l, bool *ours, GError **err)
{
    g_autoptr(GString) body = NULL;
    g_autoptr(GError) local = NULL;

    if (!s3c_s3_get(l->repo, l->key, &body, &local) && local) {
        g_propagate_error(err, g_steal_pointer(&local));
        return false;
    }
    *ours = body && !strcmp(body->str, l->body);
    return true;
}

/*
 * Without conditional PUTs (OpenStack Swift's s3api): put ours where
 * none or a gone holder's is, wait, and hold it if it is still ours.
 * Two commands exclude each other unless both read the lock within the
 * same SETTLE_US, before either's PUT landed.
 */
static Attempt take_unconditionally(S3cLease *l, const S3cLeaseOptions *opts,
                                    GError **err)
{
    g_auto(S3cStamp) stamp = S3C_STAMP_INIT;
    g_autoptr(GError) local = NULL;
    g_autofree char *reason = NULL;
    bool ours = false;

    if (!judge_lock(l, opts, &stamp, &reason, &local)) {
        return judged_out(&local, err);
    }
    if (!s3c_s3_put(l->repo, l->key, l->body, strlen(l->body), err)) {
        return FAILED;
    }
    g_usleep(SETTLE_US);
    if (!still_ours(l, &ours, err)) {
        return FAILED;
    }
    if (!ours) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_LOCKED,
                    "VM %s was locked by another s3chain command that "
                    "started at the same time; run again later", l->vm);
        return TAKEN;
    }
    if (reason) {
        took_over(l, reason);
    }
    return HELD;
}

/* Why a holder lost its lock, in the message of the commit refused */
#define LOST_TO_ANOTHER "another command took the VM's lock over"

/* One renewal; sets l->lost when another command has the lock */
static void renew(S3cLease *l)
{
    int64_t start = g_get_monotonic_time();
    g_auto(S3cStamp) stamp = S3C_STAMP_INIT;
    g_autoptr(GError) local = NULL;
    g_autofree char *etag = NULL;
    const char *lost = NULL;
    bool renewed = false;

    g_mutex_lock(&l->renewing);
    g_mutex_lock(&l->lock);
    etag = g_strdup(l->etag);
    if (l->lost) {
        g_mutex_unlock(&l->lock);
        g_mutex_unlock(&l->renewing);
        return;
    }
    g_mutex_unlock(&l->lock);

    if (l->conditional) {
        switch (s3c_s3_put_if(l->repo, l->key, l->body, strlen(l->body),
                              etag ? etag : "*", &stamp, &local)) {
        case S3C_PUT_DONE:
            renewed = true;
            break;
        case S3C_PUT_PRECONDITION_FAILED:
            lost = LOST_TO_ANOTHER;
            break;
        default:
            break;              /* the bucket fails: time will tell */
        }
    } else {
        bool ours;

        if (still_ours(l, &ours, &local)) {
            if (!ours) {
                lost = LOST_TO_ANOTHER;
            } else {
                renewed = s3c_s3_put(l->repo, l->key, l->body,
                                     strlen(l->body), &local);
            }
        }
    }

    g_mutex_lock(&l->lock);
    if (renewed) {
        l->renewed_us = start;
        if (stamp.etag) {
            g_free(l->etag);
            l->etag = g_strdup(stamp.etag);
        }
    }
    if (lost && !l->lost) {
        l->lost = g_strdup(lost);
    }
    g_mutex_unlock(&l->lock);
    g_mutex_unlock(&l->renewing);
}

static gpointer renewer(gpointer opaque)
{
    S3cLease *l = opaque;
    int64_t period_us = l->lease_s * G_USEC_PER_SEC / 4;

    g_mutex_lock(&l->lock);
    while (!l->stop && !l->lost) {
        int64_t next = l->renewed_us + period_us;

        if (g_get_monotonic_time() < next) {
            g_cond_wait_until(&l->wake, &l->lock, next);
            continue;
        }
        g_mutex_unlock(&l->lock);
        renew(l);
        g_mutex_lock(&l->lock);
        if (g_get_monotonic_time() >= l->renewed_us + period_us) {
            /* it failed: try again a little later, not at once */
            g_cond_wait_until(&l->wake, &l->lock,
                              g_get_monotonic_time() + G_USEC_PER_SEC);
        }
    }
    g_mutex_unlock(&l->lock);
    return NULL;
}

static void lease_free(S3cLease *l)
{
    g_free(l->key);
    g_free(l->vm);
    g_free(l->body);
    g_free(l->owner);
    g_free(l->etag);
    g_free(l->lost);
    g_mutex_clear(&l->renewing);
    g_mutex_clear(&l->lock);
    g_cond_clear(&l->wake);
    g_free(l);
}

S3cLease *s3c_lease_acquire(const S3cRepo *repo, const S3cCatalog *cat,
                            const S3cLeaseOptions *opts, GError **err)
{
    S3cLease *l = g_new0(S3cLease, 1);
    json_object *me;
    Attempt got = AGAIN;

    g_mutex_init(&l->renewing);
    g_mutex_init(&l->lock);
    g_cond_init(&l->wake);
    l->repo_for_lease = *repo;
    l->repo_for_lease.timeout_s = MAX(opts->lease_s / 8, 2);
    l->repo_for_lease.attempts = 2;
    l->repo = &l->repo_for_lease;
    l->key = lock_key(cat);
    l->vm = g_strdup(cat->vm);
    l->lease_s = opts->lease_s;
    l->conditional = true;
    l->owner = g_strdup_printf("%08x%08x%08x%08x", g_random_int(),
                               g_random_int(), g_random_int(),
                               g_random_int());
    me = s3c_json_obj(
        "host", json_object_new_string(g_get_host_name()),
        "pid", json_object_new_int64(getpid()),
        "since", json_object_new_int64(time(NULL)),
        "lease", json_object_new_int64(l->lease_s),
        "owner", json_object_new_string(l->owner), NULL);
    l->body = g_strdup(json_object_to_json_string(me));
    json_object_put(me);

    l->renewed_us = g_get_monotonic_time();
    for (int attempt = 0; attempt < 3 && got == AGAIN; attempt++) {
        got = take_conditionally(l, opts, err);
    }
    if (got == NO_CONDITIONS) {
        l->conditional = false;
        got = take_unconditionally(l, opts, err);
        if (got == HELD) {
            s3c_output_warning("%s does not support conditional "
                               "writes: the lock of VM %s keeps out commands that "
                               "start more than 2 s apart, not closer ones "
                               "(docs/catalog.rst)", repo->endpoint, cat->vm);
        }
    }
    if (got == AGAIN) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_LOCKED,
                    "the lock of VM %s keeps changing: other commands "
                    "are taking it; run again later", cat->vm);
    }
    if (got != HELD) {
        lease_free(l);
        return NULL;
    }
    l->renewer = g_thread_new("s3chain-lease", renewer, l);
    return l;
}

bool s3c_lease_check(S3cLease *l, GError **err)
{
    int64_t silent_us;
    bool ok = false;

    renew(l);
    g_mutex_lock(&l->lock);
    silent_us = g_get_monotonic_time() - l->renewed_us;
    if (l->lost) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_LOCKED,
                    "this backup of VM %s lost its lock (%s) and was not "
                    "committed; run again", l->vm, l->lost);
    } else if (silent_us > l->lease_s * G_USEC_PER_SEC * 3 / 4) {
        /* by the time it runs out, another command may take it */
        g_set_error(err, S3C_ERROR, S3C_EXIT_TRANSIENT,
                    "could not renew the lock of VM %s for %" G_GINT64_FORMAT
                    " s (its lease is %" G_GINT64_FORMAT " s); the backup was "
                    "not committed", l->vm, silent_us / G_USEC_PER_SEC,
                    l->lease_s);
    } else {
        ok = true;
    }
    g_mutex_unlock(&l->lock);
    return ok;
}

void s3c_lease_release(S3cLease *l)
{
    g_autoptr(GError) local = NULL;
    bool ours = false;

    g_mutex_lock(&l->lock);
    l->stop = true;
    g_cond_signal(&l->wake);
    g_mutex_unlock(&l->lock);
    g_thread_join(l->renewer);

    /* never another command's lock, taken over after ours ran out */
    if (!l->lost && still_ours(l, &ours, &local) && ours) {
        s3c_s3_delete(l->repo, l->key, &local);
    }
    if (local) {
        s3c_output_warning("could not remove the lock s3://%s/%s: "
                           "%s", l->repo->bucket, l->key, local->message);
    }
    lease_free(l);
}
