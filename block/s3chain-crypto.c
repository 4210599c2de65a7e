/*
 * s3chain: the signer's two digests, over QEMU's crypto API
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "crypto/hash.h"
#include "crypto/hmac.h"
#include "s3chain-sigv4.h"

/* SHA-256 is in every crypto backend QEMU builds with: nothing can fail */

void s3chain_sha256_hex(const char *data, size_t len,
                        char hex[2 * S3CHAIN_SHA256_LEN + 1])
{
    g_autofree char *digest = NULL;

    qcrypto_hash_digest(QCRYPTO_HASH_ALGO_SHA256, data, len, &digest,
                        &error_abort);
    memcpy(hex, digest, 2 * S3CHAIN_SHA256_LEN + 1);
}

void s3chain_hmac_sha256(const uint8_t *key, size_t key_len,
                         const char *data, size_t len,
                         uint8_t mac[S3CHAIN_SHA256_LEN])
{
    g_autoptr(QCryptoHmac) hmac = qcrypto_hmac_new(QCRYPTO_HASH_ALGO_SHA256,
                                                   key, key_len,
                                                   &error_abort);
    g_autofree uint8_t *out = NULL;
    size_t out_len = 0;

    qcrypto_hmac_bytes(hmac, data, len, &out, &out_len, &error_abort);
    assert(out_len == S3CHAIN_SHA256_LEN);
    memcpy(mac, out, S3CHAIN_SHA256_LEN);
}
