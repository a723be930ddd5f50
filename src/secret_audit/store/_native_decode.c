/* The store's extension, part: decode_logs, an OTLP logs request (ExportLogsServiceRequest) read
 * resource by resource and scope by scope into the record tuples _otlp.Record describes.
 */
#include "_native.h"

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

PyObject *
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
