/* The store's extension, part: an AnyValue, an ArrayValue and a map of KeyValues as Python objects,
 * the typed attribute columns filled on the way.
 */
#include "_native.h"

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

/* ---- AnyValue, arrays and key-value maps --------------------------------------------------------- */

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
int
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
int
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
