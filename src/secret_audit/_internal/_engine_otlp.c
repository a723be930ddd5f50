/* The agent's engine, part: one slot's records, each with its canonical JSON (the plan's pieces and
 * the record's numbers) hashed into the chain and its OTLP LogRecord written field by field, each field
 * with its error path, in one function (stamp_slot) that must match encode_log_record byte for byte.
 */
#include "_engine.h"
#include <limits.h>

/* ---- writing into a buffer ----------------------------------------------------------------------- */

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

/* ---- a record: its canonical JSON and its LogRecord ----------------------------------------------- */

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

/* One slot's records: shapes[first:first + m] (each with its plan), stamped and framed onto r->o. */
int
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
