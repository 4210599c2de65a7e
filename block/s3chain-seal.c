/*
 * s3chain: the keys, sealed blocks and manifest MAC of encrypted chunked
 * images, one definition for the driver and the s3chain command
 *
 * From the user's 256-bit key K, HKDF-SHA-256 (RFC 5869, salt "s3chain")
 * derives the key id (info "s3chain key id", 16 bytes) and, for each
 * image, from its random image id I in lower-case hex, the key of its
 * blocks (info "s3chain data " I) and of its manifest's MAC (info
 * "s3chain manifest " I), 32 bytes each.  A block is sealed with
 * AES-256-GCM under a random 96-bit nonce, with the associated data
 * "I/INDEX.TAG/BLOCK": the image, the chunk (INDEX in 16 hex digits),
 * the upload (TAG) and the block (decimal), so that a sealed block read
 * anywhere else than where it was written fails to open.
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "s3chain-seal.h"
#ifdef CONFIG_GNUTLS
#include <gnutls/gnutls.h>
#include <gnutls/crypto.h>
#endif

#define SALT "s3chain"
#define KEY_ID_INFO "s3chain key id"
#define DATA_INFO "s3chain data "
#define MAC_INFO "s3chain manifest "

struct S3chainSealer {
#ifdef CONFIG_GNUTLS
    gnutls_aead_cipher_hd_t cipher;
#endif
    char image_id[2 * S3CHAIN_ID_LEN + 1];
};

static void to_hex(const uint8_t *bytes, size_t n, char *hex)
{
    for (size_t i = 0; i < n; i++) {
        g_snprintf(hex + 2 * i, 3, "%02x", bytes[i]);
    }
}

bool s3chain_seal_available(void)
{
#ifdef CONFIG_GNUTLS
    return true;
#else
    return false;
#endif
}

#ifdef CONFIG_GNUTLS
/* @len bytes of HKDF-SHA-256 of @key, for @info (and @id's hex) */
static bool derive(const uint8_t *key, const char *info, const uint8_t *id,
                   uint8_t *out, size_t len)
{
    uint8_t prk[32];
    char text[64];
    gnutls_datum_t ikm = { (unsigned char *)key, S3CHAIN_KEY_LEN };
    gnutls_datum_t salt = { (unsigned char *)SALT, strlen(SALT) };
    gnutls_datum_t prk_datum = { prk, sizeof(prk) };
    gnutls_datum_t info_datum = { (unsigned char *)text, 0 };
    bool ok;

    g_strlcpy(text, info, sizeof(text));
    if (id) {
        to_hex(id, S3CHAIN_ID_LEN, text + strlen(text));
    }
    info_datum.size = strlen(text);
    ok = gnutls_hkdf_extract(GNUTLS_MAC_SHA256, &ikm, &salt, prk) == 0 &&
         gnutls_hkdf_expand(GNUTLS_MAC_SHA256, &prk_datum, &info_datum,
                            out, len) == 0;
    gnutls_memset(prk, 0, sizeof(prk));
    return ok;
}
#endif

bool s3chain_key_id(const uint8_t key[S3CHAIN_KEY_LEN],
                    uint8_t id[S3CHAIN_ID_LEN])
{
#ifdef CONFIG_GNUTLS
    return derive(key, KEY_ID_INFO, NULL, id, S3CHAIN_ID_LEN);
#else
    return false;
#endif
}

bool s3chain_new_image_id(uint8_t id[S3CHAIN_ID_LEN])
{
#ifdef CONFIG_GNUTLS
    return gnutls_rnd(GNUTLS_RND_RANDOM, id, S3CHAIN_ID_LEN) == 0;
#else
    return false;
#endif
}

bool s3chain_image_keys(const uint8_t key[S3CHAIN_KEY_LEN],
                        const uint8_t image_id[S3CHAIN_ID_LEN],
                        S3chainImageKeys *keys)
{
#ifdef CONFIG_GNUTLS
    memcpy(keys->image_id, image_id, S3CHAIN_ID_LEN);
    return derive(key, DATA_INFO, image_id, keys->data, S3CHAIN_KEY_LEN) &&
           derive(key, MAC_INFO, image_id, keys->mac, S3CHAIN_KEY_LEN);
#else
    return false;
#endif
}

void s3chain_image_keys_clear(S3chainImageKeys *keys)
{
#ifdef CONFIG_GNUTLS
    gnutls_memset(keys, 0, sizeof(*keys));
#else
    memset(keys, 0, sizeof(*keys));
#endif
}

S3chainSealer *s3chain_sealer_new(const S3chainImageKeys *keys)
{
#ifdef CONFIG_GNUTLS
    S3chainSealer *s = g_new0(S3chainSealer, 1);
    gnutls_datum_t key = { (unsigned char *)keys->data, S3CHAIN_KEY_LEN };

    if (gnutls_aead_cipher_init(&s->cipher, GNUTLS_CIPHER_AES_256_GCM,
                                &key) < 0) {
        g_free(s);
        return NULL;
    }
    to_hex(keys->image_id, S3CHAIN_ID_LEN, s->image_id);
    return s;
#else
    return NULL;
#endif
}

void s3chain_sealer_free(S3chainSealer *s)
{
#ifdef CONFIG_GNUTLS
    if (s) {
        gnutls_aead_cipher_deinit(s->cipher);
        g_free(s);
    }
#endif
}

#ifdef CONFIG_GNUTLS
/* Where a block is: what its seal authenticates with it */
static char *block_place(S3chainSealer *s, uint64_t index, const char *tag,
                         unsigned block)
{
    return g_strdup_printf("%s/%016" PRIx64 ".%s/%u", s->image_id, index,
                           tag, block);
}
#endif

bool s3chain_seal_block(S3chainSealer *s, uint64_t index, const char *tag,
                        unsigned block, const uint8_t *nonce,
                        const uint8_t *plain, size_t len, uint8_t *out)
{
#ifdef CONFIG_GNUTLS
    g_autofree char *place = block_place(s, index, tag, block);
    size_t out_len = len + S3CHAIN_GCM_TAG_LEN;

    if (nonce) {
        memcpy(out, nonce, S3CHAIN_NONCE_LEN);
    } else if (gnutls_rnd(GNUTLS_RND_NONCE, out, S3CHAIN_NONCE_LEN) < 0) {
        return false;
    }
    return gnutls_aead_cipher_encrypt(s->cipher, out, S3CHAIN_NONCE_LEN,
                                      place, strlen(place),
                                      S3CHAIN_GCM_TAG_LEN, plain, len,
                                      out + S3CHAIN_NONCE_LEN,
                                      &out_len) == 0 &&
           out_len == len + S3CHAIN_GCM_TAG_LEN;
#else
    return false;
#endif
}

bool s3chain_open_block(S3chainSealer *s, uint64_t index, const char *tag,
                        unsigned block, const uint8_t *stored,
                        size_t stored_len, uint8_t *plain)
{
#ifdef CONFIG_GNUTLS
    g_autofree char *place = block_place(s, index, tag, block);
    size_t plain_len;

    if (stored_len < S3CHAIN_SEAL_OVERHEAD) {
        return false;
    }
    plain_len = stored_len - S3CHAIN_SEAL_OVERHEAD;
    return gnutls_aead_cipher_decrypt(s->cipher, stored, S3CHAIN_NONCE_LEN,
                                      place, strlen(place),
                                      S3CHAIN_GCM_TAG_LEN,
                                      stored + S3CHAIN_NONCE_LEN,
                                      stored_len - S3CHAIN_NONCE_LEN,
                                      plain, &plain_len) == 0 &&
           plain_len == stored_len - S3CHAIN_SEAL_OVERHEAD;
#else
    return false;
#endif
}

void s3chain_manifest_mac(const S3chainImageKeys *keys, const char *text,
                          size_t len, char hex[2 * S3CHAIN_MAC_LEN + 1])
{
    uint8_t mac[S3CHAIN_MAC_LEN] = { 0 };

#ifdef CONFIG_GNUTLS
    gnutls_hmac_fast(GNUTLS_MAC_SHA256, keys->mac, S3CHAIN_KEY_LEN, text, len,
                     mac);
#endif
    to_hex(mac, sizeof(mac), hex);
}

bool s3chain_manifest_mac_split(const char *text, size_t *covered,
                                const char **mac_hex)
{
    const char *member = g_strrstr(text, S3CHAIN_MAC_MEMBER);
    const char *hex, *end;

    if (!member) {
        return false;
    }
    hex = member + strlen(S3CHAIN_MAC_MEMBER);
    end = hex + 2 * S3CHAIN_MAC_LEN;
    if (strlen(hex) < 2 * S3CHAIN_MAC_LEN ||
        strspn(hex, "0123456789abcdef") != 2 * S3CHAIN_MAC_LEN ||
        (strcmp(end, "\"}") && strcmp(end, "\"}\n"))) {
        return false;
    }
    *covered = member - text;
    *mac_hex = hex;
    return true;
}

bool s3chain_manifest_mac_matches(const S3chainImageKeys *keys,
                                  const char *text, size_t covered,
                                  const char *mac_hex)
{
    char want[2 * S3CHAIN_MAC_LEN + 1];
    unsigned char differ = 0;

    s3chain_manifest_mac(keys, text, covered, want);
    /* in constant time: how much of a forged MAC is right must not show */
    for (size_t i = 0; i < 2 * S3CHAIN_MAC_LEN; i++) {
        differ |= want[i] ^ mac_hex[i];
    }
    return !differ;
}
