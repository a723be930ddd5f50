/* The store's two hot loops in C: an OTLP logs request to record tuples, and rows to binary COPY.
 *
 * Why: the generated protobuf classes make a Python object for every attribute and value before the
 * store copies them into dicts (about 13 µs per audit record, more than all the rest of ingest), and
 * psycopg formats a binary COPY row through several Python layers (about 1.9 µs). Everything that
 * decides anything (the contract's checks, hashing, the chain walk, tenants, time bounds) is Python,
 * in _prepare and _ingest; this module only reads bytes into plain objects and writes plain objects
 * into bytes.
 *
 * It uses the limited C API of Python 3.10 (the stable ABI: one abi3 build serves every later
 * Python) and nothing else of the interpreter: no struct layouts, no slot offsets, no callbacks.
 * Each function has a pure-Python twin (_otlp.decode_protobuf_python, psycopg's COPY), which is the
 * reference: the tests and the fuzzers (tests/store/fuzz.py, scripts/fuzz-asan.sh) hold the two to
 * each other.
 *
 * The surface, documented in _native.pyi:
 *   decode_logs(body, names, kinds) -> list[tuple] | None   (raises ValueError past a limit)
 *   encode_rows(rows, codes) -> bytes
 *   MAX_DEPTH, MAX_RECORDS, MAX_ITEMS                         (the decoder's limits, as ints)
 */
#define Py_LIMITED_API 0x030A0000
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

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
static int
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
static int
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

static int
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

static int
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
static int
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

/* Strict UTF-8, as the generated classes check every string field they read (even one the records
 * do not keep): 1 valid, 0 not. */
static int
valid_utf8(span v)
{
    const unsigned char *p = v.p, *end = v.end;
    while (p < end) {
        unsigned char c = *p;
        if (c < 0x80) {
            p++;
            continue;
        }
        int n;
        unsigned char lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) {
            n = 1;
        }
        else if (c >= 0xE0 && c <= 0xEF) {
            n = 2;
            lo = c == 0xE0 ? 0xA0 : 0x80;
            hi = c == 0xED ? 0x9F : 0xBF;
        }
        else if (c >= 0xF0 && c <= 0xF4) {
            n = 3;
            lo = c == 0xF0 ? 0x90 : 0x80;
            hi = c == 0xF4 ? 0x8F : 0xBF;
        }
        else {
            return 0;
        }
        if (end - p <= n || p[1] < lo || p[1] > hi) {
            return 0;
        }
        for (int i = 2; i <= n; i++) {
            if ((p[i] & 0xC0) != 0x80) {
                return 0;
            }
        }
        p += n + 1;
    }
    return 1;
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

static int
too_many(const char *what, long limit)
{
    PyErr_Format(PyExc_ValueError, "more than %ld %s", limit, what);
    return FAILED;
}

/* A string field as str: OK (in *out), UNSURE (invalid UTF-8) or FAILED. */
static int
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

static PyObject *
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

/* Bytes as lowercase hex, as bytes.hex() gives them. */
static char *
write_hex(char *out, span in)
{
    static const char digits[] = "0123456789abcdef";
    for (const unsigned char *p = in.p; p < in.end; p++) {
        *out++ = digits[*p >> 4];
        *out++ = digits[*p & 15];
    }
    return out;
}

/* Bytes in standard base64 with padding, as base64.b64encode gives them. */
static char *
write_base64(char *out, span in)
{
    static const char digits[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *p = in.p;
    for (; in.end - p >= 3; p += 3) {
        uint32_t v = (uint32_t)p[0] << 16 | (uint32_t)p[1] << 8 | p[2];
        *out++ = digits[v >> 18];
        *out++ = digits[(v >> 12) & 63];
        *out++ = digits[(v >> 6) & 63];
        *out++ = digits[v & 63];
    }
    if (in.end - p == 1) {
        *out++ = digits[p[0] >> 2];
        *out++ = digits[(p[0] & 3) << 4];
        *out++ = '=';
        *out++ = '=';
    }
    else if (in.end - p == 2) {
        *out++ = digits[p[0] >> 2];
        *out++ = digits[((p[0] & 3) << 4) | (p[1] >> 4)];
        *out++ = digits[(p[1] & 15) << 2];
        *out++ = '=';
    }
    return out;
}

/* The next occurrence of the length-delimited field `number` in m: OK (in *inner), 0 none left
 * (UNSURE is never returned for that: see the callers), or -2 not the plain form. Other fields are
 * skipped, except `checked` (a string field the records do not keep, whose UTF-8 is checked as the
 * generated classes check it) and `refuse` (a field with strings this does not read); 0 is neither. */
enum { NONE_LEFT = 0, NOT_PLAIN = -2 };

static int
next_of(span *m, uint32_t number, uint32_t checked, uint32_t refuse, span *inner)
{
    while (m->p < m->end) {
        uint32_t field;
        int wire;
        if (!tag(m, &field, &wire) || (refuse && field == refuse)) {
            return NOT_PLAIN;
        }
        if (field == number) {
            return wire == 2 && delimited(m, inner) ? OK : NOT_PLAIN;
        }
        if (checked && field == checked) {
            span text_field;
            if (wire != 2 || !delimited(m, &text_field) || !valid_utf8(text_field)) {
                return NOT_PLAIN;
            }
        }
        else if (!skip(m, wire)) {
            return NOT_PLAIN;
        }
    }
    return NONE_LEFT;
}

/* Fields 1..n of a message, each length-delimited and there at most once (a message field sent twice
 * is merged by the generated classes, a string field's last value kept: not the plain form); other
 * fields are skipped, but `refuse` (a field with strings this does not read and check, 0: none) is
 * not the plain form either. 1 plain, with has[i] set for each field i + 1 found, else 0. */
static int
once_each(span m, uint32_t n, uint32_t refuse, span *out, int *has)
{
    for (uint32_t i = 0; i < n; i++) {
        has[i] = 0;
    }
    while (m.p < m.end) {
        uint32_t field;
        int wire;
        if (!tag(&m, &field, &wire) || (refuse && field == refuse)) {
            return 0;
        }
        if (field >= 1 && field <= n) {
            if (wire != 2 || has[field - 1] || !delimited(&m, &out[field - 1])) {
                return 0;
            }
            has[field - 1] = 1;
        }
        else if (!skip(&m, wire)) {
            return 0;
        }
    }
    return 1;
}

/* ---- AnyValue, arrays and key-value maps --------------------------------------------------------- */

static int any_value(span v, int depth, PyObject **out);
static int key_values(span m, uint32_t number, uint32_t refuse, int depth, const reader *r,
                      PyObject *typed, PyObject **out);

/* An ArrayValue's values (repeated field 1) as a list. */
static int
array(span m, int depth, PyObject **out)
{
    PyObject *list = PyList_New(0);
    if (list == NULL) {
        return FAILED;
    }
    span inner;
    int found, result = OK;
    Py_ssize_t n = 0;
    while (result == OK && (found = next_of(&m, 1, 0, 0, &inner)) != NONE_LEFT) {
        PyObject *item = NULL;
        if (found == NOT_PLAIN) {
            result = UNSURE;
        }
        else if (++n > MAX_ITEMS) {
            result = too_many("items in one attribute map, array or key-value list", MAX_ITEMS);
        }
        else if ((result = any_value(inner, depth + 1, &item)) == OK) {
            result = PyList_Append(list, item) < 0 ? FAILED : OK;
            Py_DECREF(item);
        }
    }
    if (result == OK) {
        *out = list;
    }
    else {
        Py_DECREF(list);
    }
    return result;
}

/* One AnyValue at nesting level `depth`, as _otlp._pb_value gives it (None when no value is set). */
static int
any_value(span v, int depth, PyObject **out)
{
    if (depth > MAX_DEPTH) {
        PyErr_Format(PyExc_ValueError, "a value nested deeper than %d levels", MAX_DEPTH);
        return FAILED;
    }
    int kind = 0; /* the oneof's field number, 0: none */
    span body = {NULL, NULL};
    uint64_t scalar = 0;
    while (v.p < v.end) {
        uint32_t field;
        int wire;
        if (!tag(&v, &field, &wire)) {
            return UNSURE;
        }
        if (field >= 1 && field <= 8 && kind != 0) {
            /* a second value: the oneof keeps the last (merging a repeated sub-message), and the
             * generated classes still checked the first one. Not the plain form. */
            return UNSURE;
        }
        switch (field) {
        case 1: case 5: case 6: case 7: /* string, array, kvlist, bytes */
            if (wire != 2 || !delimited(&v, &body)) {
                return UNSURE;
            }
            kind = (int)field;
            break;
        case 2: case 3: case 8: /* bool, int, an index into a string table (read as no value) */
            if (wire != 0 || !varint(&v, &scalar)) {
                return UNSURE;
            }
            kind = (int)field;
            break;
        case 4: /* double */
            if (wire != 1 || !fixed64(&v, &scalar)) {
                return UNSURE;
            }
            kind = 4;
            break;
        default:
            if (!skip(&v, wire)) {
                return UNSURE;
            }
        }
    }
    switch (kind) {
    case 1:
        return text(body, out);
    case 2:
        *out = PyBool_FromLong(scalar != 0);
        return OK;
    case 3:
        *out = PyLong_FromLongLong((long long)scalar);
        return *out == NULL ? FAILED : OK;
    case 4: {
        double d;
        memcpy(&d, &scalar, sizeof d);
        *out = PyFloat_FromDouble(d);
        return *out == NULL ? FAILED : OK;
    }
    case 5:
        return array(body, depth, out);
    case 6:
        return key_values(body, 1, 0, depth + 1, NULL, NULL, out);
    case 7:
        *out = ascii(body, (body.end - body.p + 2) / 3 * 4, write_base64);
        return *out == NULL ? FAILED : OK;
    default:
        *out = Py_NewRef(Py_None);
        return OK;
    }
}

/* The typed column a key names (-1: none). */
static int
column_of(const reader *r, span key)
{
    Py_ssize_t n = key.end - key.p;
    for (int i = 0; i < r->n_columns; i++) {
        if (r->columns[i].size == n && memcmp(r->columns[i].text, key.p, (size_t)n) == 0) {
            return i;
        }
    }
    return -1;
}

/* Whether a decoded value has its column's exact type (a bool is not an int, as in Python). */
static int
fits(PyObject *value, char kind)
{
    return kind == 't' ? PyUnicode_CheckExact(value)
        : kind == 'd' ? PyFloat_CheckExact(value)
        : PyLong_CheckExact(value);
}

/* One KeyValue into a dict (a later key overwrites, as a dict comprehension does); with `r`, a key
 * naming a typed column is the caller's own str, and the value fills its slot of `typed` when it has
 * the column's type, or empties it. */
static int
key_value(PyObject *into, span kv, int depth, const reader *r, PyObject *typed)
{
    span f[2]; /* the key, the value */
    int has[2];
    if (!once_each(kv, 2, 0, f, has)) {
        return UNSURE;
    }
    int col = -1;
    PyObject *k = NULL, *v = NULL;
    int result;
    if (r != NULL && has[0] && (col = column_of(r, f[0])) >= 0) {
        k = Py_NewRef(r->columns[col].name);
        result = OK;
    }
    else if (has[0]) {
        result = text(f[0], &k);
    }
    else {
        k = PyUnicode_FromStringAndSize("", 0);
        result = k == NULL ? FAILED : OK;
    }
    if (result == OK) {
        span none = {kv.end, kv.end};
        result = any_value(has[1] ? f[1] : none, depth, &v); /* no value: None, at this depth all the same */
    }
    if (result == OK && PyDict_SetItem(into, k, v) < 0) {
        result = FAILED;
    }
    if (result == OK && col >= 0) {
        PyObject *slot = fits(v, r->columns[col].kind) ? v : Py_None;
        /* typed is new and not yet shared: its slots may be replaced */
        if (PyTuple_SetItem(typed, col, Py_NewRef(slot)) < 0) {
            result = FAILED;
        }
    }
    Py_XDECREF(k);
    Py_XDECREF(v);
    return result;
}

/* A message's repeated KeyValue field (number `number`) as a dict; other fields are skipped, but
 * `refuse` (a field with strings this does not read and check, 0: none) makes it unsure. With `r`,
 * the typed columns are filled as key_value says. Values in it are at nesting level `depth`. */
static int
key_values(span m, uint32_t number, uint32_t refuse, int depth, const reader *r, PyObject *typed,
           PyObject **out)
{
    PyObject *dict = PyDict_New();
    if (dict == NULL) {
        return FAILED;
    }
    span inner;
    int found, result = OK;
    Py_ssize_t n = 0;
    while (result == OK && (found = next_of(&m, number, 0, refuse, &inner)) != NONE_LEFT) {
        if (found == NOT_PLAIN) {
            result = UNSURE;
        }
        else if (++n > MAX_ITEMS) {
            result = too_many("items in one attribute map, array or key-value list", MAX_ITEMS);
        }
        else {
            result = key_value(dict, inner, depth, r, typed);
        }
    }
    if (result == OK) {
        *out = dict;
    }
    else {
        Py_DECREF(dict);
    }
    return result;
}

/* ---- records ---------------------------------------------------------------------------------- */

/* One LogRecord appended to `out` as the tuple _otlp.Record describes. */
static int
log_record(reader *r, PyObject *out, span m, PyObject *resource, PyObject *scope_name,
           PyObject *scope_version)
{
    uint64_t time = 0, observed = 0, severity = 0;
    span severity_text = {NULL, NULL}, event_name = {NULL, NULL}, trace = {NULL, NULL},
         span_id = {NULL, NULL}, body = {NULL, NULL};
    int has_body = 0, ok = 1;
    span attrs_at = m;
    while (ok && m.p < m.end) {
        uint32_t field;
        int wire;
        span inner;
        if (!tag(&m, &field, &wire)) {
            return UNSURE;
        }
        switch (field) {
        case 1:
            ok = wire == 1 && fixed64(&m, &time);
            break;
        case 11:
            ok = wire == 1 && fixed64(&m, &observed);
            break;
        case 2:
            ok = wire == 0 && varint(&m, &severity);
            break;
        case 3: case 5: case 6: case 9: case 10: case 12:
            ok = wire == 2 && delimited(&m, &inner)
                && !(field == 5 && has_body) && !(field == 3 && severity_text.p)
                && !(field == 9 && trace.p) && !(field == 10 && span_id.p) && !(field == 12 && event_name.p);
            if (ok) {
                switch (field) {
                case 3: severity_text = inner; break;
                case 5: body = inner; has_body = 1; break;
                case 9: trace = inner; break;
                case 10: span_id = inner; break;
                case 12: event_name = inner; break;
                default: break; /* 6: attributes, read below */
                }
            }
            break;
        default:
            ok = skip(&m, wire);
        }
    }
    if (!ok) {
        return UNSURE;
    }
    if (++r->records > MAX_RECORDS) {
        return too_many("log records in one request", MAX_RECORDS);
    }
    enum { N_FIELDS = 13, TYPED = 12 };
    PyObject *f[N_FIELDS] = {NULL};
    int result = OK;
    f[0] = PyLong_FromUnsignedLongLong(time);
    f[1] = PyLong_FromUnsignedLongLong(observed);
    f[2] = PyLong_FromLong((long)(int32_t)(uint32_t)severity); /* an int32 enum, truncated as upb does */
    f[6] = trace.p ? ascii(trace, 2 * (trace.end - trace.p), write_hex) : PyUnicode_FromStringAndSize("", 0);
    f[7] = span_id.p ? ascii(span_id, 2 * (span_id.end - span_id.p), write_hex)
                     : PyUnicode_FromStringAndSize("", 0);
    f[9] = Py_NewRef(resource);
    f[10] = Py_NewRef(scope_name);
    f[11] = Py_NewRef(scope_version);
    f[TYPED] = PyTuple_New(r->n_columns);
    for (int i = 0; i < N_FIELDS; i++) {
        if ((i <= 2 || (i >= 6 && i != 8)) && f[i] == NULL) {
            result = FAILED;
        }
    }
    for (int i = 0; result == OK && i < r->n_columns; i++) {
        if (PyTuple_SetItem(f[TYPED], i, Py_NewRef(Py_None)) < 0) {
            result = FAILED;
        }
    }
    if (result == OK) {
        result = severity_text.p ? text(severity_text, &f[3])
            : (f[3] = PyUnicode_FromStringAndSize("", 0)) == NULL ? FAILED : OK;
    }
    if (result == OK) {
        result = has_body ? any_value(body, 1, &f[4]) : (f[4] = Py_NewRef(Py_None), OK);
    }
    if (result == OK) {
        result = event_name.p ? text(event_name, &f[5])
            : (f[5] = PyUnicode_FromStringAndSize("", 0)) == NULL ? FAILED : OK;
    }
    if (result == OK) {
        result = key_values(attrs_at, 6, 0, 1, r, f[TYPED], &f[8]);
    }
    if (result == OK) {
        PyObject *rec = PyTuple_New(N_FIELDS);
        if (rec == NULL) {
            result = FAILED;
        }
        for (int i = 0; rec != NULL && i < N_FIELDS; i++) {
            PyTuple_SetItem(rec, i, f[i]); /* steals, cannot fail on a new tuple */
            f[i] = NULL;
        }
        if (rec != NULL) {
            result = PyList_Append(out, rec) < 0 ? FAILED : OK;
            Py_DECREF(rec);
        }
    }
    for (int i = 0; i < N_FIELDS; i++) {
        Py_XDECREF(f[i]);
    }
    return result;
}

/* One ScopeLogs: its scope first (wherever it is on the wire), then its records in order. */
static int
scope_logs(reader *r, PyObject *out, span m, PyObject *resource)
{
    span scope = {NULL, NULL}, f[2]; /* the scope; its name and version */
    int found, has[2];
    /* 3: the scope's attributes, which this does not read and check */
    if (!once_each(m, 1, 0, &scope, &found) || !once_each(scope, 2, 3, f, has)) {
        return UNSURE;
    }
    PyObject *name = NULL, *version = NULL;
    int result = has[0] ? text(f[0], &name) : ((name = PyUnicode_FromStringAndSize("", 0)) ? OK : FAILED);
    if (result == OK) {
        result = has[1] ? text(f[1], &version)
                        : ((version = PyUnicode_FromStringAndSize("", 0)) ? OK : FAILED);
    }
    span inner;
    int more;
    /* 2: the records; 3: the schema URL, checked */
    while (result == OK && (more = next_of(&m, 2, 3, 0, &inner)) != NONE_LEFT) {
        result = more == NOT_PLAIN ? UNSURE : log_record(r, out, inner, resource, name, version);
    }
    Py_XDECREF(name);
    Py_XDECREF(version);
    return result;
}

static int
resource_logs(reader *r, PyObject *out, span m)
{
    span res = {NULL, NULL};
    int found;
    if (!once_each(m, 1, 0, &res, &found)) {
        return UNSURE;
    }
    PyObject *resource = NULL;
    /* 3: entity references, strings this does not read */
    int result = found ? key_values(res, 1, 3, 1, NULL, NULL, &resource)
                       : ((resource = PyDict_New()) ? OK : FAILED);
    span inner;
    int more;
    /* 2: the scopes' logs; 3: the schema URL, checked */
    while (result == OK && (more = next_of(&m, 2, 3, 0, &inner)) != NONE_LEFT) {
        result = more == NOT_PLAIN ? UNSURE : scope_logs(r, out, inner, resource);
    }
    Py_XDECREF(resource);
    return result;
}

/* The caller's typed columns: names (str) and one kind code each. */
static int
columns_of(reader *r, PyObject *names, PyObject *kinds)
{
    if (!PyTuple_Check(names) || !PyBytes_Check(kinds) || PyTuple_Size(names) != PyBytes_Size(kinds)
        || PyTuple_Size(names) > MAX_COLUMNS) {
        PyErr_Format(PyExc_TypeError, "names must be a tuple of at most %d str, kinds as many codes in bytes",
                     MAX_COLUMNS);
        return -1;
    }
    const char *codes = PyBytes_AsString(kinds);
    r->n_columns = (int)PyTuple_Size(names);
    for (int i = 0; i < r->n_columns; i++) {
        column *c = &r->columns[i];
        c->name = PyTuple_GetItem(names, i);
        c->kind = codes[i];
        if (c->name == NULL || !PyUnicode_CheckExact(c->name) || (c->kind != 't' && c->kind != 'd'
                                                                 && c->kind != 'q')) {
            PyErr_SetString(PyExc_TypeError, "each name must be a str, each kind one of b'tdq'");
            return -1;
        }
        c->text = PyUnicode_AsUTF8AndSize(c->name, &c->size);
        if (c->text == NULL) {
            return -1;
        }
    }
    return 0;
}

PyDoc_STRVAR(decode_logs_doc,
"decode_logs(body, names, kinds, /)\n--\n\n"
"An ExportLogsServiceRequest's records as _otlp.decode_protobuf_python makes them (tuples in the\n"
"order of _otlp.Record, the last one the typed columns: for each of names, the attribute's value if\n"
"it has the kind given for it in kinds, b't' str, b'd' float or b'q' int, else None), or None when\n"
"the request is not in the plain form this reads. Raises ValueError past one of the limits.");

static PyObject *
decode_logs(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 3 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "decode_logs(body: bytes, names: tuple[str, ...], kinds: bytes)");
        return NULL;
    }
    reader r = {.records = 0};
    if (columns_of(&r, args[1], args[2]) < 0) {
        return NULL;
    }
    char *data;
    Py_ssize_t size;
    if (PyBytes_AsStringAndSize(args[0], &data, &size) < 0) {
        return NULL;
    }
    span m = {(const unsigned char *)data, (const unsigned char *)data + size};
    PyObject *out = PyList_New(0);
    int result = out == NULL ? FAILED : OK, more;
    span inner;
    while (result == OK && (more = next_of(&m, 1, 0, 0, &inner)) != NONE_LEFT) {
        result = more == NOT_PLAIN ? UNSURE : resource_logs(&r, out, inner);
    }
    if (result == OK) {
        return out;
    }
    Py_XDECREF(out);
    if (result == UNSURE) {
        Py_RETURN_NONE;
    }
    return NULL;
}

/* ---- binary COPY ---------------------------------------------------------------------------- */

static inline void
put_u16(char *out, uint16_t v)
{
    out[0] = (char)(v >> 8);
    out[1] = (char)v;
}

static inline void
put_u32(char *out, uint32_t v)
{
    out[0] = (char)(v >> 24);
    out[1] = (char)(v >> 16);
    out[2] = (char)(v >> 8);
    out[3] = (char)v;
}

static inline void
put_u64(char *out, uint64_t v)
{
    put_u32(out, (uint32_t)(v >> 32));
    put_u32(out + 4, (uint32_t)v);
}

/* The type's name only: a value never goes into an error message. */
static int
wrong_type(PyObject *v, char code, Py_ssize_t column)
{
    PyObject *name = PyObject_GetAttrString((PyObject *)Py_TYPE(v), "__name__");
    if (name != NULL) {
        PyErr_Format(PyExc_TypeError, "column %zd: type code %c cannot take %.100S", column, code, name);
        Py_DECREF(name);
    }
    return -1;
}

/* The COPY stream being written: one pass over the rows into a buffer that grows as needed. */
typedef struct {
    char *buf;
    Py_ssize_t len, cap;
} out_buffer;

/* Room for `more` bytes at the end: a pointer to it, or NULL with MemoryError set. */
static char *
room(out_buffer *o, Py_ssize_t more)
{
    if (o->cap - o->len < more) {
        if (more > PY_SSIZE_T_MAX / 2 - o->len) {
            PyErr_NoMemory();
            return NULL;
        }
        Py_ssize_t cap = o->cap * 2 > o->len + more ? o->cap * 2 : o->len + more;
        char *grown = PyMem_Realloc(o->buf, (size_t)cap);
        if (grown == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        o->buf = grown;
        o->cap = cap;
    }
    char *at = o->buf + o->len;
    o->len += more;
    return at;
}

/* A length word and n bytes. */
static int
put_bytes(out_buffer *o, const char *data, Py_ssize_t n, Py_ssize_t column)
{
    if (n > INT32_MAX - 4) {
        PyErr_Format(PyExc_OverflowError, "column %zd: value too long for COPY", column);
        return -1;
    }
    char *at = room(o, 4 + n);
    if (at == NULL) {
        return -1;
    }
    put_u32(at, (uint32_t)n);
    memcpy(at + 4, data, (size_t)n);
    return 0;
}

/* Exact types first: a pointer comparison, where the limited API's subtype check is a call. */
#define IS(v, exact, check) (Py_IS_TYPE((v), &(exact)) || check(v))

/* One value in binary COPY form (length word included); 0 or -1 with an exception set. */
static int
put_field(out_buffer *o, PyObject *v, char code, Py_ssize_t column)
{
    char *at;
    if (v == Py_None) {
        if ((at = room(o, 4)) == NULL) {
            return -1;
        }
        put_u32(at, 0xFFFFFFFFu);
        return 0;
    }
    switch (code) {
    case 'q': {
        if (!IS(v, PyLong_Type, PyLong_Check)) {
            return wrong_type(v, code, column);
        }
        long long n = PyLong_AsLongLong(v);
        if ((n == -1 && PyErr_Occurred()) || (at = room(o, 12)) == NULL) {
            return -1;
        }
        put_u32(at, 8);
        put_u64(at + 4, (uint64_t)n);
        return 0;
    }
    case 'h': {
        if (!IS(v, PyLong_Type, PyLong_Check)) {
            return wrong_type(v, code, column);
        }
        long n = PyLong_AsLong(v);
        if (n == -1 && PyErr_Occurred()) {
            return -1;
        }
        if (n < INT16_MIN || n > INT16_MAX) {
            PyErr_Format(PyExc_OverflowError, "column %zd: out of the smallint range", column);
            return -1;
        }
        if ((at = room(o, 6)) == NULL) {
            return -1;
        }
        put_u32(at, 2);
        put_u16(at + 4, (uint16_t)(int16_t)n);
        return 0;
    }
    case 'd': {
        if (!IS(v, PyFloat_Type, PyFloat_Check)) {
            return wrong_type(v, code, column);
        }
        double d = PyFloat_AsDouble(v); /* a float's own value: no __float__ is called */
        uint64_t bits;
        memcpy(&bits, &d, sizeof bits);
        if ((at = room(o, 12)) == NULL) {
            return -1;
        }
        put_u32(at, 8);
        put_u64(at + 4, bits);
        return 0;
    }
    case 't': {
        if (!IS(v, PyUnicode_Type, PyUnicode_Check)) {
            return wrong_type(v, code, column);
        }
        Py_ssize_t n;
        const char *text = PyUnicode_AsUTF8AndSize(v, &n);
        if (text == NULL) {
            return -1;
        }
        if (memchr(text, 0, (size_t)n) != NULL) {
            PyErr_Format(PyExc_ValueError, "column %zd: PostgreSQL text cannot contain NUL characters",
                         column);
            return -1;
        }
        return put_bytes(o, text, n, column);
    }
    case 'b': {
        if (!IS(v, PyBytes_Type, PyBytes_Check)) {
            return wrong_type(v, code, column);
        }
        char *data;
        Py_ssize_t n;
        if (PyBytes_AsStringAndSize(v, &data, &n) < 0) {
            return -1;
        }
        return put_bytes(o, data, n, column);
    }
    default:
        PyErr_Format(PyExc_ValueError, "unknown type code %c", code);
        return -1;
    }
}

PyDoc_STRVAR(encode_rows_doc,
"encode_rows(rows, codes, /)\n--\n\n"
"Rows (lists) as binary COPY tuples, one type code per column: q int8, h int2, d float8, t text,\n"
"b bytes as they are; psycopg's row formatter does the same through several Python layers.");

static PyObject *
encode_rows(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 2 || !PyList_Check(args[0]) || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "encode_rows(rows: list, codes: bytes)");
        return NULL;
    }
    PyObject *rows = args[0];
    const char *codes = PyBytes_AsString(args[1]);
    Py_ssize_t width = PyBytes_Size(args[1]);
    if (width > INT16_MAX) {
        PyErr_SetString(PyExc_ValueError, "too many columns");
        return NULL;
    }
    /* No Python code runs while the rows are read (no calls out, the GIL held), so nothing can change
       them under this loop; the list is asked for its size on every turn all the same. */
    out_buffer o = {NULL, 0, 0};
    if (room(&o, PyList_Size(rows) * 1024 + 2) == NULL) { /* about a row of the audit table each */
        goto failed;
    }
    o.len = 0;
    for (Py_ssize_t r = 0; r < PyList_Size(rows); r++) {
        PyObject *row = PyList_GetItem(rows, r);
        char *at;
        if (row == NULL || !PyList_Check(row) || PyList_Size(row) != width) {
            PyErr_Format(PyExc_TypeError, "row %zd: expected a list of %zd values", r, width);
            goto failed;
        }
        if ((at = room(&o, 2)) == NULL) {
            goto failed;
        }
        put_u16(at, (uint16_t)width);
        for (Py_ssize_t c = 0; c < width; c++) {
            if (put_field(&o, PyList_GetItem(row, c), codes[c], c) < 0) {
                goto failed;
            }
        }
    }
    PyObject *out = PyBytes_FromStringAndSize(o.buf != NULL ? o.buf : "", o.len);
    PyMem_Free(o.buf);
    return out;
failed:
    PyMem_Free(o.buf);
    return NULL;
}

static PyMethodDef methods[] = {
    {"decode_logs", (PyCFunction)(void (*)(void))decode_logs, METH_FASTCALL, decode_logs_doc},
    {"encode_rows", (PyCFunction)(void (*)(void))encode_rows, METH_FASTCALL, encode_rows_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "secret_audit.store._native",
    .m_doc = "The store's OTLP reader and binary COPY writer in C, each with a pure-Python twin.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "MAX_DEPTH", MAX_DEPTH) < 0
        || PyModule_AddIntConstant(m, "MAX_RECORDS", MAX_RECORDS) < 0
        || PyModule_AddIntConstant(m, "MAX_ITEMS", MAX_ITEMS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
