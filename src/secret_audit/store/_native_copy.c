/* The store's extension, part: encode_rows, rows of Python values as PostgreSQL's binary COPY
 * format, one type code per column.
 */
#include "_native.h"

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

PyObject *
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
