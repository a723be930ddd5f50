/* What the parts of the agent's engine (_engine.c and its _engine_*.c files, one extension module)
 * share: the limited API, the types a run of records is made of, and the helpers on a record's path
 * that more than one part calls, inline here so that none of them becomes a call across files.
 * Private: only the engine's own files include it, and nothing it declares is exported from the module.
 */
#ifndef SECRET_AUDIT_ENGINE_H
#define SECRET_AUDIT_ENGINE_H

#define Py_LIMITED_API 0x030A0000
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* shared by the module's files, not by the process: hidden from the dynamic symbol table */
#if defined(__GNUC__)
#define ENGINE_PRIVATE __attribute__((visibility("hidden")))
#else
#define ENGINE_PRIVATE
#endif

/* ---- SHA-256: the portable code (_engine_sha256.c) or libcrypto's --------------------------------- */

typedef struct {
    uint32_t h[8];
    uint64_t n;
    unsigned char buf[64];
    size_t used;
} sha256;

static inline void
sha256_init(sha256 *s)
{
    static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(s->h, iv, sizeof iv);
    s->n = 0;
    s->used = 0;
}

ENGINE_PRIVATE void sha256_update(sha256 *s, const unsigned char *p, size_t n);
/* The digest as 64 lowercase hex digits. */
ENGINE_PRIVATE void sha256_hex(sha256 *s, char *out);

/* libcrypto's SHA-256, when the process has it (hashlib loaded it): several times faster than the
 * portable code on CPUs with SHA extensions. The low-level calls, not the one-shot SHA256(), which in
 * OpenSSL 3 looks the algorithm up (under a lock) on every call. Looked up at import (find_libcrypto);
 * NULL: the portable code. */
typedef int (*sha_init_fn)(void *);
typedef int (*sha_update_fn)(void *, const void *, size_t);
typedef int (*sha_final_fn)(unsigned char *, void *);
extern ENGINE_PRIVATE sha_init_fn ossl_init;
extern ENGINE_PRIVATE sha_update_fn ossl_update;
extern ENGINE_PRIVATE sha_final_fn ossl_final;

static inline void
digest_hex(const char *p, size_t n, char *out)
{
    static const char hex[] = "0123456789abcdef";
    if (ossl_init != NULL) {
        _Alignas(16) unsigned char ctx[256]; /* SHA256_CTX is 112 bytes */
        unsigned char md[32];
        ossl_init(ctx);
        ossl_update(ctx, p, n);
        ossl_final(md, ctx);
        for (int i = 0; i < 32; i++) {
            out[2 * i] = hex[md[i] >> 4];
            out[2 * i + 1] = hex[md[i] & 15];
        }
        return;
    }
    sha256 s;
    sha256_init(&s);
    sha256_update(&s, (const unsigned char *)p, n);
    sha256_hex(&s, out);
}

/* libcrypto's functions into the pointers above, if the process has loaded it. */
ENGINE_PRIVATE void find_libcrypto(void);

/* ---- a growing byte buffer, and bytes as a pointer and a length ---------------------------------- */

typedef struct {
    char *p;
    size_t len, cap;
} buf;

typedef struct {
    const char *p;
    size_t n;
} text;

static inline int
as_text(PyObject *bytes, text *t)
{
    char *p;
    Py_ssize_t n;
    if (PyBytes_AsStringAndSize(bytes, &p, &n) < 0) {
        return -1;
    }
    t->p = p, t->n = (size_t)n;
    return 0;
}

/* ---- a run of records ---------------------------------------------------------------------------- */

/* The plan's fields (engine.Plan) and the stream's (engine.StreamConsts), by position. */
enum { P_PIECES, P_CODES, P_SEVERITY, P_BODY, P_TAIL, P_ATTRS, P_EVENT, P_JOINED, P_ENDS, P_FIELDS };
enum { C_SID, C_DURATION, C_EVENT_KEY, C_STREAM, C_SEQUENCE_KEY, C_PREV, C_DIGEST, C_FIELDS };

/* A slot's numbers, read from a tuple (ring.Slot) or from the ring's raw bytes. */
typedef struct {
    long long start, end;
    int traced;
    uint64_t trace_hi, trace_lo, span;
    unsigned long flags;
} slotvals;

/* What a run carries from record to record: the stream's constants, the chain, the buffers. */
typedef struct {
    text c[C_FIELDS];
    buf o, scratch;
    long long seq, observed;
    char prev[64];
    Py_ssize_t plan_at;
} run;

/* _engine_float.c: a duration as contract.canonical_bytes writes it; its length, or -1 with an
 * exception set. */
ENGINE_PRIVATE Py_ssize_t float_json(double d, char *out, size_t cap);

/* _engine_otlp.c: one slot's records, shapes[first:first + m], stamped and framed onto r->o. */
ENGINE_PRIVATE int stamp_slot(run *r, const slotvals *sv, PyObject *shapes, Py_ssize_t first, Py_ssize_t m);

/* _engine.c: a run's start and end, shared by stamp_slots and stamp_raw. */
ENGINE_PRIVATE int run_open(run *r, PyObject *consts, long long seq, PyObject *head_obj, long long observed,
                            PyObject *out);
ENGINE_PRIVATE PyObject *run_close(run *r, PyObject *out, int ok);

/* The module's functions that live in the other files, for its method table (_engine.c). */
ENGINE_PRIVATE PyObject *float_text(PyObject *self, PyObject *arg);
ENGINE_PRIVATE PyObject *portable_sha256(PyObject *self, PyObject *arg);
ENGINE_PRIVATE PyObject *resolve_raw(PyObject *self, PyObject *args);
ENGINE_PRIVATE PyObject *stamp_raw(PyObject *self, PyObject *args);

#endif
