/* The audit agent's per-record engine: a run of ring slots to chained, encoded LogRecords in one call.
 *
 * Why: in Python a record costs about 10 µs of the agent's one GIL (a dict per record, the canonical
 * JSON, the chain, the OTLP encode, a dozen calls); here it costs splicing its numbers into the
 * pieces its shape's Plan precomputed (engine.plan_of) and one SHA-256. Everything that decides
 * anything (shapes, spans, batches, delivery, losses) stays Python.
 *
 * It uses the limited C API of Python 3.10 (one abi3 build serves every later Python). The pure-Python
 * twin, engine.stamp_slots_py, is the reference: tests/test_engine.py holds the two, and both to the
 * slow path (contract.stamp, encode_log_record), byte for byte.
 *
 *   stamp_slots(slots, shapes, consts, seq, head, observed, out, plan_at=8) -> (seq, head)
 *   float_text(x) -> bytes   (a duration as contract.canonical_bytes writes it)
 *   portable_sha256(data) -> str, LIBCRYPTO   (the built-in hash, for its test; whether libcrypto's is used)
 *   malloc_arenas(n) -> bool, malloc_trim() -> bool   (the agent's malloc: glibc only, else False)
 *
 * Past the 400-line guideline, for two reasons: a portable SHA-256 (so that the build needs no
 * library's headers; about 110 lines), and the OTLP record spelled out field by field, each with
 * its error path, in one function that must match encode_log_record byte for byte.
 */
#define Py_LIMITED_API 0x030A0000
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* ---- SHA-256 (FIPS 180-4), so that the build needs no library beyond libc ----------------------- */

typedef struct {
    uint32_t h[8];
    uint64_t n;
    unsigned char buf[64];
    size_t used;
} sha256;

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

static void
sha256_init(sha256 *s)
{
    static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(s->h, iv, sizeof iv);
    s->n = 0;
    s->used = 0;
}

static void
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
static void
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

/* libcrypto's SHA-256, when the process has it (hashlib loaded it): several times faster than the
 * portable code above on CPUs with SHA extensions. The low-level calls, not the one-shot SHA256(),
 * which in OpenSSL 3 looks the algorithm up (under a lock) on every call. Looked up at import;
 * NULL: the code above. */
typedef int (*sha_init_fn)(void *);
typedef int (*sha_update_fn)(void *, const void *, size_t);
typedef int (*sha_final_fn)(unsigned char *, void *);
static sha_init_fn ossl_init;
static sha_update_fn ossl_update;
static sha_final_fn ossl_final;

static void
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

static void
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

/* ---- a growing byte buffer ---------------------------------------------------------------------- */

typedef struct {
    char *p;
    size_t len, cap;
} buf;

static int
grow(buf *b, size_t n)
{
    if (b->len + n <= b->cap) {
        return 0;
    }
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n) {
        cap *= 2;
    }
    char *p = PyMem_Realloc(b->p, cap);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = p, b->cap = cap;
    return 0;
}

static int
put(buf *b, const void *p, size_t n)
{
    if (grow(b, n) < 0) {
        return -1;
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
    return 0;
}

typedef struct {
    const char *p;
    size_t n;
} text;

static int
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

static int
put_bytes(buf *b, PyObject *bytes)
{
    text t;
    if (as_text(bytes, &t) < 0) {
        return -1;
    }
    return put(b, t.p, t.n);
}

static size_t
varint(unsigned char *out, uint64_t v)
{
    size_t n = 0;
    while (v > 0x7f) {
        out[n++] = (unsigned char)((v & 0x7f) | 0x80);
        v >>= 7;
    }
    out[n++] = (unsigned char)v;
    return n;
}

static int
put_varint(buf *b, uint64_t v)
{
    unsigned char tmp[10];
    return put(b, tmp, varint(tmp, v));
}

static int
put_fixed(buf *b, unsigned char tag, uint64_t v, int size)
{
    unsigned char tmp[9];
    tmp[0] = tag;
    for (int i = 0; i < size; i++) {
        tmp[1 + i] = (unsigned char)(v >> (8 * i));
    }
    return put(b, tmp, (size_t)size + 1);
}

/* ---- numbers as text ---------------------------------------------------------------------------- */

static PyObject *orjson_dumps; /* the slow path of float_json: outside the range repr and orjson agree */

/* A duration as contract.canonical_bytes writes it; its length, or -1 with an exception set. */
static Py_ssize_t
float_json(double d, char *out, size_t cap)
{
    double a = fabs(d);
    if (d == 0 || (a >= 1e-4 && a < 1e16)) { /* repr's digits, and orjson's, in this range */
        char *s = PyOS_double_to_string(d, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
        if (s == NULL) {
            return -1;
        }
        size_t n = strlen(s);
        if (n < cap) {
            memcpy(out, s, n);
        }
        PyMem_Free(s);
        if (n >= cap) {
            PyErr_SetString(PyExc_ValueError, "duration too long");
            return -1;
        }
        return (Py_ssize_t)n;
    }
    if (orjson_dumps == NULL) {
        PyObject *mod = PyImport_ImportModule("orjson");
        if (mod == NULL) {
            return -1;
        }
        orjson_dumps = PyObject_GetAttrString(mod, "dumps");
        Py_DECREF(mod);
        if (orjson_dumps == NULL) {
            return -1;
        }
    }
    PyObject *f = PyFloat_FromDouble(d);
    if (f == NULL) {
        return -1;
    }
    PyObject *r = PyObject_CallFunctionObjArgs(orjson_dumps, f, NULL);
    Py_DECREF(f);
    if (r == NULL) {
        return -1;
    }
    char *p;
    Py_ssize_t n;
    if (PyBytes_AsStringAndSize(r, &p, &n) < 0 || (size_t)n >= cap) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "duration too long");
        }
        Py_DECREF(r);
        return -1;
    }
    memcpy(out, p, (size_t)n);
    Py_DECREF(r);
    return n;
}

/* shapes.fill's took: f"{ms:.0f}ms" from 10 ms, else f"{ms:.2f}ms". */
static Py_ssize_t
took_text(double ms, char *out, size_t cap)
{
    char *s = PyOS_double_to_string(ms, 'f', ms >= 10 ? 0 : 2, 0, NULL);
    if (s == NULL) {
        return -1;
    }
    size_t n = strlen(s);
    if (n + 2 < cap) {
        memcpy(out, s, n);
        memcpy(out + n, "ms", 2);
    }
    PyMem_Free(s);
    if (n + 2 >= cap) {
        PyErr_SetString(PyExc_ValueError, "duration too long");
        return -1;
    }
    return (Py_ssize_t)n + 2;
}

/* A non-negative number in decimal (what "%lld" writes, without printf's cost); its length. */
static size_t
decimal(unsigned long long v, char *out)
{
    char tmp[24];
    size_t n = 0, k = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n) {
        out[k++] = tmp[--n];
    }
    return k;
}

static void
hex_of(uint64_t v, char *out)
{
    static const char hex[] = "0123456789abcdef";
    for (int i = 15; i >= 0; i--, v >>= 4) {
        out[i] = hex[v & 15];
    }
}

static PyObject *sixty_four;

/* ---- stamp_slots --------------------------------------------------------------------------------- */

/* The plan's fields (engine.Plan) and the stream's (engine.StreamConsts), by position. */
enum { P_PIECES, P_CODES, P_SEVERITY, P_BODY, P_TAIL, P_ATTRS, P_EVENT, P_JOINED, P_ENDS, P_FIELDS };
enum { C_SID, C_DURATION, C_EVENT_KEY, C_STREAM, C_SEQUENCE_KEY, C_PREV, C_DIGEST, C_FIELDS };

static int
slot_int64(PyObject *slot, Py_ssize_t i, long long *out)
{
    PyObject *v = PyTuple_GetItem(slot, i);
    if (v == NULL) {
        return -1;
    }
    *out = PyLong_AsLongLong(v);
    return *out == -1 && PyErr_Occurred() ? -1 : 0;
}

/* One record: its canonical JSON hashed into digest, its framed LogRecord appended to out. */
typedef struct {
    text dur_json, took, time_json, trace_json, span_json, sid, prev;
    char seq_text[24];
    size_t seq_len;
} holes;

static int
canonical_digest(PyObject *plan, const holes *h, buf *scratch, char *digest)
{
    text c, joined, ends;
    if (as_text(PyTuple_GetItem(plan, P_CODES), &c) < 0 || as_text(PyTuple_GetItem(plan, P_JOINED), &joined) < 0
        || as_text(PyTuple_GetItem(plan, P_ENDS), &ends) < 0) {
        return -1;
    }
    if (ends.n != 4 * (c.n + 1)) {
        PyErr_SetString(PyExc_ValueError, "a plan's pieces do not match its holes");
        return -1;
    }
    scratch->len = 0;
    size_t at = 0;
    for (size_t i = 0; i <= c.n; i++) {
        const unsigned char *e = (const unsigned char *)ends.p + 4 * i;
        size_t end = (size_t)e[0] | (size_t)e[1] << 8 | (size_t)e[2] << 16 | (size_t)e[3] << 24;
        if (end < at || end > joined.n) {
            PyErr_SetString(PyExc_ValueError, "a plan's pieces do not match its holes");
            return -1;
        }
        if (put(scratch, joined.p + at, end - at) < 0) {
            return -1;
        }
        at = end;
        if (i == c.n) {
            break;
        }
        int r;
        switch (c.p[i]) {
        case 'D': r = put(scratch, h->dur_json.p, h->dur_json.n); break;
        case 'E':
            r = put(scratch, "\"", 1) || put(scratch, h->sid.p, h->sid.n) || put(scratch, ":", 1)
                || put(scratch, h->seq_text, h->seq_len) || put(scratch, "\"", 1);
            break;
        case 'S': r = put(scratch, "\"", 1) || put(scratch, h->sid.p, h->sid.n) || put(scratch, "\"", 1); break;
        case 'Q': r = put(scratch, h->seq_text, h->seq_len); break;
        case 'P': r = put(scratch, "\"", 1) || put(scratch, h->prev.p, 64) || put(scratch, "\"", 1); break;
        case 'T': r = put(scratch, h->took.p, h->took.n); break;
        case 'I': r = put(scratch, h->span_json.p, h->span_json.n); break;
        case 'M': r = put(scratch, h->time_json.p, h->time_json.n); break;
        case 'R': r = put(scratch, h->trace_json.p, h->trace_json.n); break;
        default: PyErr_SetString(PyExc_ValueError, "unknown hole in a plan"); return -1;
        }
        if (r) {
            return -1;
        }
    }
    digest_hex(scratch->p, scratch->len, digest);
    return 0;
}

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

/* One slot's records: shapes[first:first + m] (each with its plan), stamped and framed onto r->o. */
static int
stamp_slot(run *r, const slotvals *sv, PyObject *shapes, Py_ssize_t first, Py_ssize_t m)
{
    holes h;
    long long start = sv->start, end = sv->end;
    char digest[64];
    h.sid = r->c[C_SID];
    h.prev.p = r->prev, h.prev.n = 64;
    if (start < 0) {
        PyErr_SetString(PyExc_ValueError, "a negative start time");
        return -1;
    }
    char trace_json[34], span_json[18];
    if (sv->traced) {
        if (sv->flags > 0xffffffffUL) {
            PyErr_SetString(PyExc_OverflowError, "trace flags past 32 bits");
            return -1;
        }
        trace_json[0] = trace_json[33] = '"';
        hex_of(sv->trace_hi, trace_json + 1);
        hex_of(sv->trace_lo, trace_json + 17);
        span_json[0] = span_json[17] = '"';
        hex_of(sv->span, span_json + 1);
        h.trace_json.p = trace_json, h.trace_json.n = 34;
        h.span_json.p = span_json, h.span_json.n = 18;
    } else {
        h.trace_json.p = h.span_json.p = "\"\"";
        h.trace_json.n = h.span_json.n = 2;
    }
    double duration = (double)((__int128)end - (__int128)start) / 1e6;
    char dur_json[64], took[400], time_json[24];
    Py_ssize_t k = float_json(duration, dur_json, sizeof dur_json);
    if (k < 0) {
        return -1;
    }
    h.dur_json.p = dur_json, h.dur_json.n = (size_t)k;
    k = took_text(duration, took, sizeof took);
    if (k < 0) {
        return -1;
    }
    h.took.p = took, h.took.n = (size_t)k;
    h.time_json.p = time_json, h.time_json.n = decimal((unsigned long long)start, time_json);
    uint64_t dbits;
    memcpy(&dbits, &duration, 8);
    const text *c = r->c;
    buf *rec = &r->o; /* each record is written in place, behind room for its frame's tag and length */
    for (Py_ssize_t j = 0; j < m; j++) {
        PyObject *shape = PySequence_GetItem(shapes, first + j);
        if (shape == NULL) {
            return -1;
        }
        PyObject *plan = PyTuple_Check(shape) ? PyTuple_GetItem(shape, r->plan_at) : NULL;
        Py_DECREF(shape); /* the list still holds it */
        if (plan == NULL || !PyTuple_Check(plan) || PyTuple_Size(plan) != P_FIELDS) {
            PyErr_Clear();
            PyErr_SetString(PyExc_TypeError, "a shape without a plan");
            return -1;
        }
        if (r->seq == LLONG_MAX) {
            PyErr_SetString(PyExc_OverflowError, "sequence past 63 bits");
            return -1;
        }
        long long seq = ++r->seq;
        h.seq_len = decimal((unsigned long long)seq, h.seq_text); /* seq > 0 */
        if (canonical_digest(plan, &h, &r->scratch, digest) < 0) {
            return -1;
        }
        /* the LogRecord, in encode_log_record's field order */
        text body, tail_text;
        PyObject *tail = PyTuple_GetItem(plan, P_TAIL);
        if (as_text(PyTuple_GetItem(plan, P_BODY), &body) < 0) {
            return -1;
        }
        if (grow(rec, 3) < 0) {
            return -1;
        }
        size_t at = rec->len, from = at + 3; /* a record of 128 to 16,383 bytes needs 2 length bytes */
        rec->len = from;
        int e = start ? put_fixed(rec, 0x09, (uint64_t)start, 8) : 0;
        e = e || put_bytes(rec, PyTuple_GetItem(plan, P_SEVERITY));
        if (tail == Py_None) {
            e = e || put(rec, body.p, body.n);
        } else {
            if (as_text(tail, &tail_text) < 0) {
                return -1;
            }
            size_t raw = body.n + h.took.n + tail_text.n;
            unsigned char v[10];
            size_t vn = varint(v, raw);
            e = e || put(rec, "\x2a", 1) || put_varint(rec, 1 + vn + raw) || put(rec, "\x0a", 1)
                || put(rec, v, vn) || put(rec, body.p, body.n) || put(rec, h.took.p, h.took.n)
                || put(rec, tail_text.p, tail_text.n);
        }
        e = e || put_bytes(rec, PyTuple_GetItem(plan, P_ATTRS));
        /* duration, event id, stream, sequence, previous hash, hash */
        e = e || put(rec, c[C_DURATION].p, c[C_DURATION].n);
        for (int b = 0; b < 8 && !e; b++) {
            unsigned char byte = (unsigned char)(dbits >> (8 * b));
            e = put(rec, &byte, 1);
        }
        size_t id_len = h.sid.n + 1 + h.seq_len;
        unsigned char v1[10], v2[10];
        size_t n1 = varint(v1, id_len), n2 = varint(v2, 1 + n1 + id_len);
        size_t kv = c[C_EVENT_KEY].n + 1 + n2 + 1 + n1 + id_len;
        e = e || put(rec, "\x32", 1) || put_varint(rec, kv) || put(rec, c[C_EVENT_KEY].p, c[C_EVENT_KEY].n)
            || put(rec, "\x12", 1) || put(rec, v2, n2) || put(rec, "\x0a", 1) || put(rec, v1, n1)
            || put(rec, h.sid.p, h.sid.n) || put(rec, ":", 1) || put(rec, h.seq_text, h.seq_len);
        e = e || put(rec, c[C_STREAM].p, c[C_STREAM].n);
        unsigned char sv8[10];
        size_t sn = varint(sv8, (uint64_t)seq);
        e = e || put(rec, "\x32", 1) || put_varint(rec, c[C_SEQUENCE_KEY].n + 3 + sn)
            || put(rec, c[C_SEQUENCE_KEY].p, c[C_SEQUENCE_KEY].n) || put(rec, "\x12", 1)
            || put_varint(rec, 1 + sn) || put(rec, "\x18", 1) || put(rec, sv8, sn);
        e = e || put(rec, c[C_PREV].p, c[C_PREV].n) || put(rec, r->prev, 64);
        e = e || put(rec, c[C_DIGEST].p, c[C_DIGEST].n) || put(rec, digest, 64);
        if (sv->traced) {
            unsigned char ids[16];
            if (sv->flags) {
                e = e || put_fixed(rec, 0x45, sv->flags, 4);
            }
            for (int b = 0; b < 8; b++) {
                ids[b] = (unsigned char)(sv->trace_hi >> (56 - 8 * b));
                ids[8 + b] = (unsigned char)(sv->trace_lo >> (56 - 8 * b));
            }
            e = e || put(rec, "\x4a\x10", 2) || put(rec, ids, 16);
            if (sv->span) {
                for (int b = 0; b < 8; b++) {
                    ids[b] = (unsigned char)(sv->span >> (56 - 8 * b));
                }
                e = e || put(rec, "\x52\x08", 2) || put(rec, ids, 8);
            }
        }
        if (r->observed) {
            e = e || put_fixed(rec, 0x59, (uint64_t)r->observed, 8);
        }
        e = e || put_bytes(rec, PyTuple_GetItem(plan, P_EVENT));
        if (e) {
            return -1;
        }
        size_t len = rec->len - from;
        unsigned char v[10];
        size_t vn = varint(v, len);
        if (vn > 2 && grow(rec, vn - 2) < 0) {
            return -1;
        }
        if (vn != 2) {
            memmove(rec->p + at + 1 + vn, rec->p + from, len);
        }
        rec->p[at] = 0x12;
        memcpy(rec->p + at + 1, v, vn);
        rec->len = at + 1 + vn + len;
        memcpy(r->prev, digest, 64);
    }
    return 0;
}

/* The arguments both calls share: stream constants, sequence, head, observed time, out. */
static int
run_open(run *r, PyObject *consts, long long seq, PyObject *head_obj, long long observed, PyObject *out)
{
    memset(r, 0, sizeof *r);
    if (!PyTuple_Check(consts) || PyTuple_Size(consts) != C_FIELDS || !PyByteArray_Check(out)) {
        PyErr_SetString(PyExc_TypeError, "consts must be StreamConsts and out a bytearray");
        return -1;
    }
    if (observed < 0) {
        PyErr_SetString(PyExc_ValueError, "a negative observed time");
        return -1;
    }
    for (int i = 0; i < C_FIELDS; i++) {
        if (as_text(PyTuple_GetItem(consts, i), &r->c[i]) < 0) {
            return -1;
        }
    }
    Py_ssize_t head_len;
    const char *head = PyUnicode_AsUTF8AndSize(head_obj, &head_len);
    if (head == NULL) {
        return -1;
    }
    if (head_len != 64) {
        PyErr_SetString(PyExc_ValueError, "the chain head is not 64 hex digits");
        return -1;
    }
    memcpy(r->prev, head, 64);
    r->seq = seq, r->observed = observed;
    return 0;
}

/* The run's records onto out (all or none), and (seq, head); NULL with the buffers freed on failure. */
static PyObject *
run_close(run *r, PyObject *out, int ok)
{
    PyObject *result = NULL;
    if (ok) {
        Py_ssize_t before = PyByteArray_Size(out);
        if (PyByteArray_Resize(out, before + (Py_ssize_t)r->o.len) == 0) {
            if (r->o.len) {
                memcpy(PyByteArray_AsString(out) + before, r->o.p, r->o.len);
            }
            result = Py_BuildValue("(Ls#)", r->seq, r->prev, (Py_ssize_t)64);
        }
    }
    PyMem_Free(r->o.p), PyMem_Free(r->scratch.p);
    return result;
}

static PyObject *
stamp_slots(PyObject *Py_UNUSED(self), PyObject *args)
{
    PyObject *slots, *shapes, *consts, *head_obj, *out;
    long long seq, observed;
    run r;
    Py_ssize_t plan_at = 8;
    if (!PyArg_ParseTuple(args, "OOOLULO|n", &slots, &shapes, &consts, &seq, &head_obj, &observed, &out, &plan_at)) {
        return NULL;
    }
    if (!PyList_Check(slots) || !PyList_Check(shapes) || PyList_Size(slots) != PyList_Size(shapes)) {
        PyErr_SetString(PyExc_TypeError, "slots and shapes must be lists of one length");
        return NULL;
    }
    if (run_open(&r, consts, seq, head_obj, observed, out) < 0) {
        return NULL;
    }
    r.plan_at = plan_at;
    Py_ssize_t n = PyList_Size(slots);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *slot = PyList_GetItem(slots, i), *slot_shapes = PyList_GetItem(shapes, i);
        slotvals sv = {0};
        if (!PyTuple_Check(slot) || PyTuple_Size(slot) < 7 || slot_int64(slot, 2, &sv.start) < 0
            || slot_int64(slot, 3, &sv.end) < 0) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_TypeError, "a slot must be a tuple of at least 7");
            }
            return run_close(&r, out, 0);
        }
        /* trace ids: none unless the trace id is set (then span id and flags as the slot has them) */
        PyObject *trace_obj = PyTuple_GetItem(slot, 4);
        sv.traced = PyObject_IsTrue(trace_obj);
        if (sv.traced < 0) {
            return run_close(&r, out, 0);
        }
        if (sv.traced) {
            sv.trace_lo = PyLong_AsUnsignedLongLongMask(trace_obj);
            PyObject *hi = PyNumber_Rshift(trace_obj, sixty_four);
            if (hi == NULL) {
                return run_close(&r, out, 0);
            }
            sv.trace_hi = PyLong_AsUnsignedLongLong(hi);
            Py_DECREF(hi);
            sv.span = PyLong_AsUnsignedLongLong(PyTuple_GetItem(slot, 5));
            sv.flags = PyLong_AsUnsignedLong(PyTuple_GetItem(slot, 6));
            if (PyErr_Occurred()) {
                return run_close(&r, out, 0);
            }
        }
        if (!PyList_Check(slot_shapes) && !PyTuple_Check(slot_shapes)) {
            PyErr_SetString(PyExc_TypeError, "a slot's shapes must be a list");
            return run_close(&r, out, 0);
        }
        if (stamp_slot(&r, &sv, slot_shapes, 0, PySequence_Size(slot_shapes)) < 0) {
            return run_close(&r, out, 0);
        }
    }
    return run_close(&r, out, 1);
}

/* ---- raw slots: a run as the ring holds it (ring.py's layout), never made into tuples ------------ */

enum { SLOT = 72, MAX_IDS = 2, WAIT = 1 };

static uint64_t
le(const unsigned char *p, int size)
{
    uint64_t v = 0;
    for (int i = size - 1; i >= 0; i--) {
        v = v << 8 | p[i];
    }
    return v;
}

static int
raw_run(PyObject *raw, const unsigned char **p, Py_ssize_t *count)
{
    char *data;
    Py_ssize_t n;
    if (PyBytes_AsStringAndSize(raw, &data, &n) < 0) {
        return -1;
    }
    if (n % SLOT) {
        PyErr_SetString(PyExc_ValueError, "a run of slots is a multiple of 72 bytes");
        return -1;
    }
    *p = (const unsigned char *)data, *count = n / SLOT;
    return 0;
}

/* resolve_raw(raw, known) -> (shapes, records, flags, wait) or None: each slot's shapes (one per record,
 * in order) from ``known`` (shape id -> Shape), the records they make, the slots' flags or-ed, and the
 * ring index of the last slot a fail-closed caller waits on (-1: none); None if an id is not known. */
static PyObject *
resolve_raw(PyObject *Py_UNUSED(self), PyObject *args)
{
    PyObject *raw, *known;
    const unsigned char *p;
    Py_ssize_t count;
    if (!PyArg_ParseTuple(args, "SO!", &raw, &PyDict_Type, &known) || raw_run(raw, &p, &count) < 0) {
        return NULL;
    }
    PyObject *shapes = PyList_New(0);
    if (shapes == NULL) {
        return NULL;
    }
    long long wait = -1;
    unsigned long flags = 0;
    Py_ssize_t records = 0;
    for (Py_ssize_t i = 0; i < count; i++, p += SLOT) {
        unsigned int n = (unsigned int)le(p + 10, 2);
        flags |= p[9];
        if (p[9] & WAIT) {
            wait = (long long)le(p, 8) - 1;
        }
        for (unsigned int k = 0; k < n && k < MAX_IDS; k++) {
            PyObject *key = PyLong_FromUnsignedLongLong(le(p + 64 + 4 * k, 4));
            if (key == NULL) {
                Py_DECREF(shapes);
                return NULL;
            }
            PyObject *shape = PyDict_GetItemWithError(known, key);
            Py_DECREF(key);
            if (shape == NULL) {
                Py_DECREF(shapes);
                if (PyErr_Occurred()) {
                    return NULL;
                }
                Py_RETURN_NONE;
            }
            if (PyList_Append(shapes, shape) < 0) {
                Py_DECREF(shapes);
                return NULL;
            }
            records++;
        }
    }
    return Py_BuildValue("(NnkL)", shapes, records, flags, wait);
}

/* stamp_raw(raw, shapes, consts, seq, head, observed, out, plan_at=8) -> (seq, head): stamp_slots for a run
 * of raw slots and their shapes as resolve_raw gives them (one list, each slot's in turn). */
static PyObject *
stamp_raw(PyObject *Py_UNUSED(self), PyObject *args)
{
    PyObject *raw, *shapes, *consts, *head_obj, *out;
    long long seq, observed;
    const unsigned char *p;
    Py_ssize_t count, plan_at = 8;
    run r;
    if (!PyArg_ParseTuple(args, "SO!OLULO|n", &raw, &PyList_Type, &shapes, &consts, &seq, &head_obj, &observed,
                          &out, &plan_at)
        || raw_run(raw, &p, &count) < 0) {
        return NULL;
    }
    if (run_open(&r, consts, seq, head_obj, observed, out) < 0) {
        return NULL;
    }
    r.plan_at = plan_at;
    Py_ssize_t used = 0, total = PyList_Size(shapes);
    for (Py_ssize_t i = 0; i < count; i++, p += SLOT) {
        slotvals sv;
        Py_ssize_t m = (Py_ssize_t)le(p + 10, 2);
        m = m < MAX_IDS ? m : MAX_IDS;
        sv.flags = (unsigned long)le(p + 12, 4);
        sv.start = (long long)le(p + 16, 8), sv.end = (long long)le(p + 24, 8);
        sv.trace_hi = le(p + 32, 8), sv.trace_lo = le(p + 40, 8), sv.span = le(p + 48, 8);
        sv.traced = (sv.trace_hi | sv.trace_lo) != 0;
        if (used + m > total) {
            PyErr_SetString(PyExc_ValueError, "fewer shapes than the slots' ids");
            return run_close(&r, out, 0);
        }
        if (stamp_slot(&r, &sv, shapes, used, m) < 0) {
            return run_close(&r, out, 0);
        }
        used += m;
    }
    if (used != total) {
        PyErr_SetString(PyExc_ValueError, "more shapes than the slots' ids");
        return run_close(&r, out, 0);
    }
    return run_close(&r, out, 1);
}

static PyObject *
float_text(PyObject *Py_UNUSED(self), PyObject *arg)
{
    double d = PyFloat_AsDouble(arg);
    if (d == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    char out[64];
    Py_ssize_t n = float_json(d, out, sizeof out);
    return n < 0 ? NULL : PyBytes_FromStringAndSize(out, n);
}

/* The portable SHA-256 alone, hex, for the test that holds it to hashlib. */
static PyObject *
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

/* The agent's threads (three per app) each got a malloc arena of their own, about 1 MiB resident apiece
 * once their buffers came and went: at most n arenas for threads made from now on. */
static PyObject *
malloc_arenas(PyObject *Py_UNUSED(self), PyObject *arg)
{
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) {
        return NULL;
    }
#ifdef __GLIBC__
    return PyBool_FromLong(n > 0 && n <= INT_MAX && mallopt(M_ARENA_MAX, (int)n) == 1);
#else
    return PyBool_FromLong(0);
#endif
}

/* Free pages malloc keeps (between live chunks too) handed back to the system; True if any was. */
static PyObject *
trim(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(unused))
{
#ifdef __GLIBC__
    int released;
    Py_BEGIN_ALLOW_THREADS
    released = malloc_trim(0);
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(released);
#else
    return PyBool_FromLong(0);
#endif
}

static PyMethodDef methods[] = {
    {"malloc_arenas", malloc_arenas, METH_O, "At most n malloc arenas for threads made from now on (glibc)."},
    {"malloc_trim", trim, METH_NOARGS, "Hand malloc's free pages back to the system (glibc)."},
    {"portable_sha256", portable_sha256, METH_O, "The built-in SHA-256 (used without libcrypto), hex."},
    {"stamp_slots", stamp_slots, METH_VARARGS, "Stamp and encode a run of ring slots' records."},
    {"stamp_raw", stamp_raw, METH_VARARGS, "stamp_slots for a run of raw ring slots."},
    {"resolve_raw", resolve_raw, METH_VARARGS, "A run of raw ring slots' shapes, records, flags and waiter."},
    {"float_text", float_text, METH_O, "A duration as the canonical JSON writes it."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_engine", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC
PyInit__engine(void)
{
    sixty_four = PyLong_FromLong(64);
    if (sixty_four == NULL) {
        return NULL;
    }
    find_libcrypto();
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "LIBCRYPTO", ossl_init != NULL) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
