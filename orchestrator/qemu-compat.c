/*
 * qemu-compat.c: glib behind the QEMU APIs that the driver's signer uses
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "qapi/error.h"
#include "crypto/hash.h"
#include "crypto/hmac.h"

#include <stdio.h>
#include <stdlib.h>

static Error abort_on_error;
Error *error_abort = &abort_on_error;

void error_setg(Error **errp, const char *fmt, ...)
{
    va_list ap;
    g_autofree char *msg = NULL;

    va_start(ap, fmt);
    msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    if (errp == &error_abort) {
        fprintf(stderr, "s3chain: unexpected error: %s\n", msg);
        abort();
    }
    if (errp && !*errp) {
        *errp = g_new0(Error, 1);
        (*errp)->gerror = g_error_new_literal(G_FILE_ERROR, 0, msg);
    }
}

size_t qcrypto_hash_digest_len(QCryptoHashAlgo alg)
{
    return g_checksum_type_get_length(G_CHECKSUM_SHA256);
}

int qcrypto_hash_digest(QCryptoHashAlgo alg, const char *buf, size_t len,
                        char **digest, Error **errp)
{
    *digest = g_compute_checksum_for_data(G_CHECKSUM_SHA256,
                                          (const guchar *)buf, len);
    return 0;
}

struct QCryptoHmac {
    GHmac *hmac;
};

QCryptoHmac *qcrypto_hmac_new(QCryptoHashAlgo alg, const uint8_t *key,
                              size_t nkey, Error **errp)
{
    QCryptoHmac *hmac = g_new0(QCryptoHmac, 1);

    hmac->hmac = g_hmac_new(G_CHECKSUM_SHA256, key, nkey);
    return hmac;
}

void qcrypto_hmac_free(QCryptoHmac *hmac)
{
    if (hmac) {
        g_hmac_unref(hmac->hmac);
        g_free(hmac);
    }
}

int qcrypto_hmac_bytes(QCryptoHmac *hmac, const char *buf, size_t len,
                       uint8_t **result, size_t *resultlen, Error **errp)
{
    gsize digest_len = qcrypto_hash_digest_len(QCRYPTO_HASH_ALGO_SHA256);

    g_hmac_update(hmac->hmac, (const guchar *)buf, len);
    *result = g_malloc(digest_len);
    g_hmac_get_digest(hmac->hmac, *result, &digest_len);
    *resultlen = digest_len;
    return 0;
}
