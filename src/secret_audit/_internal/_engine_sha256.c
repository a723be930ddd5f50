/* The agent's engine, part: SHA-256 (FIPS 180-4), so that the build needs no library beyond libc, and
 * libcrypto's, found at import when the process has it (digest_hex in _engine.h picks one).
 */
#include "_engine.h"
#include <dlfcn.h>

/* ---- SHA-256 (FIPS 180-4) ------------------------------------------------------------------------ */

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void
sha256_block(uint32_t *h, const unsigned char *p)
{
    uint32_t w[64], a, b, c, d, e, f, g, k, t1, t2;
    for (int i = 0; i < 16; i++) {
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    }
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (int i = 0; i < 64; i++) {
        t1 = k + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
        t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        k = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += k;
}

void
sha256_update(sha256 *s, const unsigned char *p, size_t n)
{
    s->n += n;
    if (s->used) {
        size_t take = 64 - s->used < n ? 64 - s->used : n;
        memcpy(s->buf + s->used, p, take);
        s->used += take, p += take, n -= take;
        if (s->used < 64) {
            return;
        }
        sha256_block(s->h, s->buf);
        s->used = 0;
    }
    for (; n >= 64; p += 64, n -= 64) {
        sha256_block(s->h, p);
    }
    memcpy(s->buf, p, n);
    s->used = n;
}

/* The digest as 64 lowercase hex digits. */
void
sha256_hex(sha256 *s, char *out)
{
    static const char hex[] = "0123456789abcdef";
    uint64_t bits = s->n * 8;
    unsigned char pad = 0x80, zero = 0, len[8];
    sha256_update(s, &pad, 1);
    while (s->used != 56) {
        sha256_update(s, &zero, 1);
    }
    for (int i = 0; i < 8; i++) {
        len[i] = (unsigned char)(bits >> (56 - 8 * i));
    }
    sha256_update(s, len, 8);
    for (int i = 0; i < 8; i++) {
        for (int j = 0; j < 4; j++) {
            unsigned char byte = (unsigned char)(s->h[i] >> (24 - 8 * j));
            out[8 * i + 2 * j] = hex[byte >> 4];
            out[8 * i + 2 * j + 1] = hex[byte & 15];
        }
    }
}

/* libcrypto's SHA-256 (_engine.h says why); NULL: the portable code above. */
sha_init_fn ossl_init;
sha_update_fn ossl_update;
sha_final_fn ossl_final;

void
find_libcrypto(void)
{
    static const char *names[] = {"libcrypto.so.3", "libcrypto.so.1.1"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        void *lib = dlopen(names[i], RTLD_LAZY | RTLD_LOCAL | RTLD_NOLOAD);
        if (lib != NULL) {
            ossl_init = (sha_init_fn)dlsym(lib, "SHA256_Init");
            ossl_update = (sha_update_fn)dlsym(lib, "SHA256_Update");
            ossl_final = (sha_final_fn)dlsym(lib, "SHA256_Final");
            if (ossl_init != NULL && ossl_update != NULL && ossl_final != NULL) {
                return;
            }
            ossl_init = NULL;
        }
    }
}

/* The portable SHA-256 alone, hex, for the test that holds it to hashlib. */
PyObject *
portable_sha256(PyObject *Py_UNUSED(self), PyObject *arg)
{
    char *p, out[64];
    Py_ssize_t n;
    if (PyBytes_AsStringAndSize(arg, &p, &n) < 0) {
        return NULL;
    }
    sha256 s;
    sha256_init(&s);
    sha256_update(&s, (const unsigned char *)p, (size_t)n);
    sha256_hex(&s, out);
    return PyUnicode_FromStringAndSize(out, 64);
}
