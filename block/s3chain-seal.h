/*
 * s3chain: the keys, sealed blocks and manifest MAC of encrypted chunked
 * images, one definition for the driver and the s3chain command
 * (docs/object-layout.rst, docs/security.rst)
 *
 * Plain C over glib and GnuTLS, compiled unchanged by the command, as
 * s3chain-format.c is.  QEMU's crypto API has no AEAD cipher and no
 * HKDF, so both sides call GnuTLS, which QEMU links, for all three.
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef BLOCK_S3CHAIN_SEAL_H
#define BLOCK_S3CHAIN_SEAL_H

/* A manifest's "encrypt": each stored block sealed with AES-256-GCM */
#define S3CHAIN_ENCRYPT_AES_256_GCM "aes-256-gcm"

/* The user's key: 256 bits, from which every other key is derived */
#define S3CHAIN_KEY_LEN 32
/* "key-id" and "image-id", 16 bytes in 32 lower-case hex digits each */
#define S3CHAIN_ID_LEN 16
/* A sealed block is a nonce, the ciphertext, and the GCM tag */
#define S3CHAIN_NONCE_LEN 12
#define S3CHAIN_GCM_TAG_LEN 16
#define S3CHAIN_SEAL_OVERHEAD (S3CHAIN_NONCE_LEN + S3CHAIN_GCM_TAG_LEN)
/* HMAC-SHA-256 of the manifest, the "mac" that ends it */
#define S3CHAIN_MAC_LEN 32
/*
 * How an encrypted manifest's last member starts: the MAC covers what
 * comes before it
 */
#define S3CHAIN_MAC_MEMBER ", \"mac\": \""

/* What one image is sealed with, derived from the user's key */
typedef struct S3chainImageKeys {
    uint8_t image_id[S3CHAIN_ID_LEN];
    uint8_t data[S3CHAIN_KEY_LEN];     /* of its blocks, AES-256-GCM */
    uint8_t mac[S3CHAIN_KEY_LEN];      /* of its manifest, HMAC-SHA-256 */
} S3chainImageKeys;

/* Whether this build has GnuTLS, which encrypted images need */
bool s3chain_seal_available(void);
/*
 * The key id of @key: what a manifest and a catalog record of the key,
 * a derived value that tells nothing of it
 */
bool s3chain_key_id(const uint8_t key[S3CHAIN_KEY_LEN],
                    uint8_t id[S3CHAIN_ID_LEN]);
/* A new image's random id */
bool s3chain_new_image_id(uint8_t id[S3CHAIN_ID_LEN]);
/* The keys of image @image_id under @key, into @keys */
bool s3chain_image_keys(const uint8_t key[S3CHAIN_KEY_LEN],
                        const uint8_t image_id[S3CHAIN_ID_LEN],
                        S3chainImageKeys *keys);
/* Wipes @keys */
void s3chain_image_keys_clear(S3chainImageKeys *keys);

/*
 * Seals and opens the blocks of one image.  A sealer is used by one
 * thread at a time; each packing or unpacking job makes its own.
 */
typedef struct S3chainSealer S3chainSealer;

S3chainSealer *s3chain_sealer_new(const S3chainImageKeys *keys);
void s3chain_sealer_free(S3chainSealer *s);
/*
 * Seals @len bytes of block @block of chunk @index, uploaded as @tag,
 * into @out: @nonce (random if NULL), the ciphertext and the tag,
 * @len + S3CHAIN_SEAL_OVERHEAD bytes.  The image's id, the chunk, the
 * upload and the block are authenticated with it.
 */
bool s3chain_seal_block(S3chainSealer *s, uint64_t index, const char *tag,
                        unsigned block, const uint8_t *nonce,
                        const uint8_t *plain, size_t len, uint8_t *out);
/*
 * Opens sealed block @block of chunk @index uploaded as @tag,
 * @stored_len bytes, into @plain (@stored_len - S3CHAIN_SEAL_OVERHEAD
 * bytes); false if it was not sealed there with these keys
 */
bool s3chain_open_block(S3chainSealer *s, uint64_t index, const char *tag,
                        unsigned block, const uint8_t *stored,
                        size_t stored_len, uint8_t *plain);

/* The MAC of @len bytes of manifest @text, as 64 lower-case hex digits */
void s3chain_manifest_mac(const S3chainImageKeys *keys, const char *text,
                          size_t len, char hex[2 * S3CHAIN_MAC_LEN + 1]);
/*
 * Where the MAC'd part of manifest @text ends, in *@covered, and its
 * MAC's hex digits, in *@mac_hex: @text must end with S3CHAIN_MAC_MEMBER,
 * 64 lower-case hex digits, "\"}" and perhaps a newline
 */
bool s3chain_manifest_mac_split(const char *text, size_t *covered,
                                const char **mac_hex);
/* Whether @mac_hex is the MAC of the first @covered bytes of @text */
bool s3chain_manifest_mac_matches(const S3chainImageKeys *keys,
                                  const char *text, size_t covered,
                                  const char *mac_hex);

#endif
