/*
 * crypto.c: the driver's signer's two digests, over glib, for the
 * command's own requests
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "s3chain.h"
#include "../block/s3chain-sigv4.h"

#include <string.h>

void s3chain_sha256_hex(const char *data, size_t len,
                        char hex[2 * S3CHAIN_SHA256_LEN + 1])
{
    g_autofree char *digest = g_compute_checksum_for_data(
        G_CHECKSUM_SHA256, (const guchar *)data, len);

    memcpy(hex, digest, 2 * S3CHAIN_SHA256_LEN + 1);
}

void s3chain_hmac_sha256(const uint8_t *key, size_t key_len,
                         const char *data, size_t len,
                         uint8_t mac[S3CHAIN_SHA256_LEN])
{
    g_autoptr(GHmac) hmac = g_hmac_new(G_CHECKSUM_SHA256, key, key_len);
    gsize mac_len = S3CHAIN_SHA256_LEN;

    g_hmac_update(hmac, (const guchar *)data, len);
    g_hmac_get_digest(hmac, mac, &mac_len);
}
