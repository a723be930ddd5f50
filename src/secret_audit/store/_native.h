/* What the parts of the store's extension (_native.c and its _native_*.c files, one module) share:
 * the limited API, the limits on hostile input, the protobuf wire format's primitives and the reader's
 * state. The primitives are on every field's path and more than one part reads fields: they are inline
 * here, so that none of them becomes a call across files. Private: only the module's own files include
 * it, and nothing it declares is exported from the module.
 */
#ifndef SECRET_AUDIT_STORE_NATIVE_H
#define SECRET_AUDIT_STORE_NATIVE_H

#define Py_LIMITED_API 0x030A0000
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* shared by the module's files, not by the process: hidden from the dynamic symbol table */
#if defined(__GNUC__)
#define NATIVE_PRIVATE __attribute__((visibility("hidden")))
#else
#define NATIVE_PRIVATE
#endif

/* ---- limits on hostile input --------------------------------------------------------------------
 *
 * The same numbers bound the Python twin (_otlp.MAX_DEPTH and so on; a test compares them). Past any
 * of them the request is refused whole (ValueError here, BadPayload in _otlp, 400 on the wire), before
 * the objects it would need are made. Lengths need no limit of their own: every string, key and id is
 * a slice of the body, which the server bounds (..._STORE_MAX_BODY_BYTES), and every item read takes
 * at least two bytes of it.
 */
enum {
    MAX_DEPTH = 32,        /* AnyValue nesting: a body or attribute value is 1, each array or kvlist adds 1 */
    MAX_RECORDS = 100000,  /* log records in one request */
    MAX_ITEMS = 10000,     /* KeyValues in one attribute map or kvlist, values in one array */
    MAX_COLUMNS = 64,      /* typed attribute columns a caller may ask for */
};

/* ---- the protobuf wire format, bounds-checked against the end of each enclosing message ---------- */

typedef struct {
    const unsigned char *p, *end;
} span;

/* 1 ok, 0 malformed. */
static inline int
varint(span *s, uint64_t *out)
{
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (s->p >= s->end) {
            return 0;
        }
        unsigned char b = *s->p++;
        if (shift == 63 && b > 1) {
            return 0; /* more than 64 bits */
        }
        v |= (uint64_t)(b & 0x7F) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return 1;
        }
    }
    return 0;
}

/* A field's tag: 1 ok, 0 malformed (field number 0, or a group, which OTLP never uses). */
static inline int
tag(span *s, uint32_t *field, int *wire)
{
    uint64_t t;
    if (!varint(s, &t) || (t >> 3) == 0 || (t >> 3) > 0x1FFFFFFF) {
        return 0;
    }
    *field = (uint32_t)(t >> 3);
    *wire = (int)(t & 7);
    return *wire != 3 && *wire != 4 && *wire <= 5;
}

static inline int
fixed64(span *s, uint64_t *out)
{
    if (s->end - s->p < 8) {
        return 0;
    }
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) {
        v = (v << 8) | s->p[i];
    }
    s->p += 8;
    *out = v;
    return 1;
}

static inline int
delimited(span *s, span *out)
{
    uint64_t n;
    if (!varint(s, &n) || n > (uint64_t)(s->end - s->p)) {
        return 0;
    }
    out->p = s->p;
    out->end = s->p + n;
    s->p += n;
    return 1;
}

/* Skip a field of another number: 1 ok, 0 malformed. */
static inline int
skip(span *s, int wire)
{
    uint64_t ignored;
    span inner;
    switch (wire) {
    case 0:
        return varint(s, &ignored);
    case 1:
        return fixed64(s, &ignored);
    case 2:
        return delimited(s, &inner);
    case 5:
        if (s->end - s->p < 4) {
            return 0;
        }
        s->p += 4;
        return 1;
    default:
        return 0;
    }
}

/* ---- the reader's state and its three outcomes ----------------------------------------------------
 *
 * Only the plain form that SDKs and collectors write is read here. Anything else (a field sent twice,
 * which protobuf merges or overrides after checking the first; a known field with another wire type;
 * groups; invalid UTF-8; the scope's attributes or the resource's entity references, whose strings
 * this does not read; a truncated or malformed message) makes the reader UNSURE: decode_logs returns
 * None, and _otlp decodes the request with the generated classes instead, which read it the same way
 * or refuse it with their own words.
 */

enum { OK = 1, UNSURE = 0, FAILED = -1 }; /* FAILED: an exception is set */

typedef struct {
    const char *text;
    Py_ssize_t size;
    PyObject *name; /* borrowed from the caller's names tuple */
    char kind;      /* 't' str, 'd' float, 'q' int */
} column;

typedef struct {
    column columns[MAX_COLUMNS];
    int n_columns;
    Py_ssize_t records;
} reader;

static inline int
too_many(const char *what, long limit)
{
    PyErr_Format(PyExc_ValueError, "more than %ld %s", limit, what);
    return FAILED;
}

/* A string field as str: OK (in *out), UNSURE (invalid UTF-8) or FAILED. */
static inline int
text(span v, PyObject **out)
{
    *out = PyUnicode_DecodeUTF8((const char *)v.p, v.end - v.p, "strict");
    if (*out != NULL) {
        return OK;
    }
    if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
        PyErr_Clear();
        return UNSURE;
    }
    return FAILED;
}

/* ASCII made in a buffer (on the stack when small) as str. */
typedef char *(*ascii_writer)(char *out, span in);

static inline PyObject *
ascii(span in, Py_ssize_t size, ascii_writer write)
{
    char small[128];
    char *buf = size <= (Py_ssize_t)sizeof small ? small : PyMem_Malloc((size_t)size);
    if (buf == NULL) {
        return PyErr_NoMemory();
    }
    write(buf, in);
    PyObject *out = PyUnicode_FromStringAndSize(buf, size);
    if (buf != small) {
        PyMem_Free(buf);
    }
    return out;
}

enum { NONE_LEFT = 0, NOT_PLAIN = -2 };

/* _native_wire.c: the next occurrence of a length-delimited field (OK, NONE_LEFT or NOT_PLAIN), and a
 * message's fields 1..n, each there at most once (1 plain, else 0); each says more where it is. */
NATIVE_PRIVATE int next_of(span *m, uint32_t number, uint32_t checked, uint32_t refuse, span *inner);
NATIVE_PRIVATE int once_each(span m, uint32_t n, uint32_t refuse, span *out, int *has);

/* _native_values.c: one AnyValue, and a message's repeated KeyValue field as a dict. */
NATIVE_PRIVATE int any_value(span v, int depth, PyObject **out);
NATIVE_PRIVATE int key_values(span m, uint32_t number, uint32_t refuse, int depth, const reader *r,
                              PyObject *typed, PyObject **out);

/* The module's two functions, for its method table (_native.c): _native_decode.c, _native_copy.c. */
NATIVE_PRIVATE PyObject *decode_logs(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
NATIVE_PRIVATE PyObject *encode_rows(PyObject *self, PyObject *const *args, Py_ssize_t nargs);

#endif
