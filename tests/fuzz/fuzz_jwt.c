/* JWT verification and the key parsers. The first byte picks what the rest
 * is fed to:
 *   't' a token, verified against a fixed secret and key set;
 *   's' "header\npayload" JSON, signed HS256 here with the fixed secret, so
 *       that the claim checks behind the signature are reached;
 *   'j' JWKS text, 'p' PEM text, 'd' SubjectPublicKeyInfo DER,
 *   'r' PKCS#1 RSAPublicKey DER, 'c' certificate DER;
 *   'b' base64url text.
 * (Other first bytes map onto these by value.) Invariants: every refusal
 * says why; accepted claims are well-formed; a failed parse adds no key;
 * what base64url accepts re-encodes to the same text. */
#include "core/base64.h"
#include "fuzz.h"
#include "gateway/jwt.h"

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wconversion"
#include <bearssl.h>
#pragma GCC diagnostic pop

static const char SECRET[] = "correct horse battery staple, 32+ bytes of secret";

/* Two of the unit tests' public keys: rsa-a (RS256 only) and ec-256. */
static const char JWKS[] =
    "{\"keys\":[{\"kid\":\"rsa-a\",\"alg\":\"RS256\",\"kty\":\"RSA\",\"n\":\"rTJNLVRsGwR7IdiVnGjSWE5flco6Umfycd13628nQTr1h"
    "DXtsLc5_zuvMfDcQmfeSvgyXZGedgKK5NgBw_n5nrh9ZnTB2oSaRNbyabtEbKKArKbh0u5m_aRRwQbcbcTPmVzFxECyO74TvH_eU"
    "ebb_KTvVxEqZsh0_fI_yR3FR9D-0goLXI3p64Dd54nx2yyaTX7vJx1MxHRABAuTBTbXADKz6YXDUZjuwfXxlOSus74HO--fyMYl0"
    "gshlOmX_onOFyUoPFOiTZLZKKJUUrkCvAcv4fwDdfOLs6xB9S4TmvX16ZM_cdGyz_p9zAuOQbMUKVJDsA3eR4UfR3kAHBewaQ\",\""
    "e\":\"AQAB\"},{\"kid\":\"ec-256\",\"kty\":\"EC\",\"x\":\"hXgYmHZX-joKU3XQ0sojTH_ss78HwQSi0e9rfcerXmM\",\"y\":\"6tWXvO-"
    "U6qTXoPBpspBp41_Bbdh_QL1Te-q16MSw71g\",\"crv\":\"P-256\"}]}";

static jwt_keys *keys;
static const jwt_policy policy = {"https://issuer.example", "ssegate", 60};
enum { NOW = 1800000000 };

static void setup(void)
{
    if (keys)
        return;
    keys = jwt_keys_new();
    const char *why = NULL;
    FUZZ_CHECK(keys != NULL);
    FUZZ_CHECK(jwt_keys_set_secret(keys, SECRET, strlen(SECRET), &why) == 0);
    FUZZ_CHECK(jwt_keys_parse_jwks(keys, JWKS, strlen(JWKS), "fuzz.jwks", &why) == 0);
    FUZZ_CHECK(jwt_keys_count(keys) == 3);
}

static void check_outcome(int rc, const char *why, const jwt_claims *c)
{
    FUZZ_CHECK(rc == 0 || rc == -1);
    if (rc != 0) {
        FUZZ_CHECK(why != NULL && why[0] != '\0');
        FUZZ_CHECK(c->sub[0] == '\0' && !c->has_rpm && !c->has_tpm && !c->has_streams);
        return;
    }
    size_t n = strnlen(c->sub, sizeof c->sub);
    FUZZ_CHECK(n > 0 && n < sizeof c->sub);
    for (size_t i = 0; i < n; i++)
        FUZZ_CHECK((unsigned char)c->sub[i] >= 0x20 && c->sub[i] != 0x7f);
    FUZZ_CHECK(c->exp + policy.leeway_s >= NOW || c->exp > UINT64_MAX - policy.leeway_s);
    if (!c->has_rpm)
        FUZZ_CHECK(c->rpm == 0);
}

static void verify_token(const char *token, size_t len)
{
    jwt_claims c;
    const char *why = NULL;
    int rc = jwt_verify(keys, &policy, (slice){token, len}, NOW, &c, &why);
    check_outcome(rc, why, &c);
    if (len > JWT_MAX_TOKEN)
        FUZZ_CHECK(rc == -1);
    if (rc == 0) {
        /* the same token is judged the same way again, and stays valid for
         * a verifier that allows any clock skew */
        jwt_claims again;
        jwt_policy lax = {policy.issuer, policy.audience, UINT64_MAX};
        FUZZ_CHECK(jwt_verify(keys, &policy, (slice){token, len}, NOW, &again, &why) == 0);
        FUZZ_CHECK(memcmp(&c, &again, sizeof c) == 0);
        FUZZ_CHECK(jwt_verify(keys, &lax, (slice){token, len}, 0, &again, &why) == 0);
        FUZZ_CHECK(jwt_verify(keys, &lax, (slice){token, len}, UINT64_MAX, &again, &why) == 0);
    }
}

/* Builds base64url(header).base64url(payload).HS256 and verifies it. */
static void sign_and_verify(const char *in, size_t len)
{
    const char *nl = memchr(in, '\n', len);
    size_t hlen = nl ? (size_t)(nl - in) : len;
    const char *payload = nl ? nl + 1 : "";
    size_t plen = nl ? len - hlen - 1 : 0;
    size_t cap = base64url_encoded_len(hlen) + base64url_encoded_len(plen) + 2 + base64url_encoded_len(32);
    char *token = fuzz_alloc(cap);
    size_t n = base64url_encode(in, hlen, token, cap);
    FUZZ_CHECK(n == base64url_encoded_len(hlen));
    token[n++] = '.';
    size_t m = base64url_encode(payload, plen, token + n, cap - n);
    FUZZ_CHECK(m == base64url_encoded_len(plen));
    n += m;
    br_hmac_key_context kc;
    br_hmac_context hc;
    unsigned char mac[32];
    br_hmac_key_init(&kc, &br_sha256_vtable, SECRET, strlen(SECRET));
    br_hmac_init(&hc, &kc, 0);
    br_hmac_update(&hc, token, n);
    br_hmac_out(&hc, mac);
    token[n++] = '.';
    n += base64url_encode(mac, sizeof mac, token + n, cap - n);
    FUZZ_CHECK(n == cap);
    verify_token(token, n);
    free(token);
}

static void parse_keys(char mode, const char *in, size_t len)
{
    jwt_keys *k = jwt_keys_new();
    FUZZ_CHECK(k != NULL);
    const char *why = NULL;
    int rc;
    if (mode == 'j')
        rc = jwt_keys_parse_jwks(k, in, len, "fuzz", &why);
    else if (mode == 'p')
        rc = jwt_keys_parse_pem(k, in, len, "fuzz", &why);
    else
        rc = jwt_keys_parse_der(k,
                                mode == 'd'   ? JWT_DER_SPKI
                                : mode == 'r' ? JWT_DER_PKCS1_RSA
                                              : JWT_DER_CERTIFICATE,
                                (const unsigned char *)in, len, "fuzz", &why);
    FUZZ_CHECK(rc == 0 || rc == -1);
    if (rc != 0) {
        FUZZ_CHECK(why != NULL && why[0] != '\0');
        FUZZ_CHECK(jwt_keys_count(k) == 0);
    } else {
        FUZZ_CHECK(jwt_keys_count(k) > 0);
        if (mode != 'j' && mode != 'p')
            FUZZ_CHECK(jwt_keys_count(k) == 1);
        /* whatever was accepted is usable: a token is checked against it */
        static const char token[] = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ1In0.AAAA";
        jwt_claims c;
        rc = jwt_verify(k, &policy, SLICE_LIT(token), NOW, &c, &why);
        FUZZ_CHECK(rc == -1 && why != NULL);
    }
    jwt_keys_free(k);
}

static void base64_round_trip(const char *in, size_t len)
{
    size_t cap = len;
    unsigned char *bytes = (unsigned char *)fuzz_alloc(cap);
    size_t n = 0;
    if (base64url_decode((slice){in, len}, bytes, cap, &n)) {
        FUZZ_CHECK(n == base64url_decoded_len(len));
        char *again = fuzz_alloc(len);
        FUZZ_CHECK(base64url_encode(bytes, n, again, len) == len);
        FUZZ_CHECK(len == 0 || memcmp(again, in, len) == 0);
        free(again);
    }
    /* and the input as bytes: encoded, it decodes back */
    size_t elen = base64url_encoded_len(len);
    char *enc = fuzz_alloc(elen);
    FUZZ_CHECK(base64url_encode(in, len, enc, elen) == elen);
    unsigned char *back = (unsigned char *)fuzz_alloc(len);
    FUZZ_CHECK(base64url_decode((slice){enc, elen}, back, len, &n) && n == len);
    FUZZ_CHECK(len == 0 || memcmp(back, in, len) == 0);
    if (elen > 0)
        FUZZ_CHECK(base64url_encode(in, len, enc, elen - 1) == 0);
    free(back);
    free(enc);
    free(bytes);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 64 * 1024)
        return 0;
    setup();
    static const char modes[] = "tsjpdrcb";
    char mode = (char)data[0];
    if (strchr(modes, mode) == NULL || mode == '\0')
        mode = modes[data[0] % (sizeof modes - 1)];
    /* an exact-size copy so ASan sees any read past the end */
    char *in = fuzz_copy(data + 1, size - 1);
    size_t len = size - 1;
    switch (mode) {
    case 't': verify_token(in, len); break;
    case 's': sign_and_verify(in, len); break;
    case 'b': base64_round_trip(in, len); break;
    default: parse_keys(mode, in, len); break;
    }
    free(in);
    return 0;
}
