/* The store's per-row ingest work in C: OTLP protobuf to records, the contract's checks, a checked
 * record's row, and rows in binary COPY form.
 *
 * Why: on two cores PostgreSQL's own index upkeep takes most of a row's CPU, and the interpreter's
 * share of the rest (attribute lookups, type checks, list building, psycopg's per-row layers) is
 * what stands between the store and 50k events/s. The byte-exact parts stay where they are: the
 * canonical JSON is still orjson's, and the hash is still hashlib's; this module only calls them.
 *
 * Every function here has a pure-Python twin (_otlp.decode_protobuf_python, _prepare.prepare_python
 * and finish_python, psycopg's own COPY), which is used when this module is not built, and which the
 * tests compare it against.
 * Anything out of the ordinary (an attribute of an unexpected type, an escape in the canonical form)
 * goes to the Python twin, so only the common case lives here.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

/* ---- plain slots classes made without their generated __init__ ------------------------------
 *
 * Record and Prepared are dataclasses with __slots__ whose __init__ only assigns its arguments;
 * running it costs more than the rest of a record's checks. A layout holds each field's slot
 * offset, read from the class's member descriptors, so an instance is allocated and filled
 * directly, and its fields are read and set through the slots instead of an attribute lookup
 * each. A class that is not such a plain slots class keeps its constructor and its attributes.
 */
enum { MAX_FIELDS = 16 };

typedef struct {
    PyTypeObject *type; /* NULL: not a plain slots class, call it */
    Py_ssize_t offset[MAX_FIELDS];
    int n;
    int readable; /* attribute access is the generic one, which the slots then answer alike */
} layout;

static int
layout_of(PyObject *cls, const char *const *names, int n, layout *out)
{
    Py_CLEAR(out->type);
    out->readable = 0;
    if (!PyType_Check(cls) || n > MAX_FIELDS || ((PyTypeObject *)cls)->tp_dictoffset != 0) {
        return 0;
    }
    for (int i = 0; i < n; i++) {
        PyObject *descr = PyObject_GetAttrString(cls, names[i]);
        if (descr == NULL) {
            return -1;
        }
        int plain = Py_IS_TYPE(descr, &PyMemberDescr_Type)
            && ((PyMemberDescrObject *)descr)->d_member->type == T_OBJECT_EX
            && !(((PyMemberDescrObject *)descr)->d_member->flags & READONLY);
        if (plain) {
            out->offset[i] = ((PyMemberDescrObject *)descr)->d_member->offset;
        }
        Py_DECREF(descr);
        if (!plain) {
            return 0;
        }
    }
    out->type = (PyTypeObject *)Py_NewRef(cls);
    out->n = n;
    out->readable = out->type->tp_getattro == PyObject_GenericGetAttr
        && out->type->tp_setattro == PyObject_GenericSetAttr;
    return 0;
}

/* obj's field i (a new reference): from its slot when obj is exactly the layout's plain class and
   the field is set, else by attribute, which also raises what an unset field raises. */
static PyObject *
field(PyObject *obj, const layout *l, int i, PyObject *name)
{
    if (l->readable && Py_IS_TYPE(obj, l->type)) {
        PyObject *v = *(PyObject **)((char *)obj + l->offset[i]);
        if (v != NULL) {
            return Py_NewRef(v);
        }
    }
    return PyObject_GetAttr(obj, name);
}

/* Set obj's field i to value, as field() reads it. */
static int
set_field(PyObject *obj, const layout *l, int i, PyObject *name, PyObject *value)
{
    if (l->readable && Py_IS_TYPE(obj, l->type)) {
        Py_XSETREF(*(PyObject **)((char *)obj + l->offset[i]), Py_NewRef(value));
        return 0;
    }
    return PyObject_SetAttr(obj, name, value);
}

/* An instance with these field values (borrowed; the instance takes its own references). */
static PyObject *
make(const layout *l, PyObject *cls, PyObject *const *values, int n)
{
    if (l->type == NULL || l->n != n) {
        return PyObject_Vectorcall(cls, values, (size_t)n, NULL);
    }
    PyObject *obj = l->type->tp_alloc(l->type, 0);
    if (obj == NULL) {
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        *(PyObject **)((char *)obj + l->offset[i]) = Py_NewRef(values[i]);
    }
    return obj;
}

/* Set once by configure(): the Python objects the fast path calls or compares against. */
static PyObject *g_dumps;      /* orjson.dumps */
static PyObject *g_sort_keys;  /* orjson.OPT_SORT_KEYS */
static PyObject *g_sha256;     /* hashlib.sha256 */
static PyObject *g_jsonb;      /* _prepare.jsonb, for the rare attributes without a column */
static PyObject *g_fallback;   /* _prepare.finish_python */
static PyObject *g_prepare_py; /* _prepare.prepare_python: words every refusal */
static PyObject *g_facts;      /* _prepare._resource_facts, once per resource and request */
static PyObject *g_prepared;   /* the Prepared class */
static layout g_prepared_layout;
static const char *const PREPARED_FIELDS[] = {"index", "stream_id", "sequence", "prev", "claimed",
                                              "tenant", "stamp", "service_name", "instance",
                                              "resource_jsonb", "rec", "computed", "row"};
enum { P_SEQUENCE = 2, P_PREV, P_CLAIMED, P_TENANT, P_STAMP, P_SERVICE_NAME, P_INSTANCE,
       P_RESOURCE_JSONB, P_REC, P_COMPUTED, P_ROW };
static PyObject *g_record; /* _otlp.Record */
static layout g_record_layout;
static const char *const RECORD_FIELDS[] = {"time_unix_nano", "observed_unix_nano", "severity_number",
                                            "severity_text", "body", "event_name", "trace_id", "span_id",
                                            "attributes", "resource", "scope_name", "scope_version"};
enum { R_TIME_UNIX_NANO, R_OBSERVED_UNIX_NANO, R_SEVERITY_NUMBER, R_SEVERITY_TEXT, R_BODY,
       R_EVENT_NAME, R_TRACE_ID, R_SPAN_ID, R_ATTRIBUTES, R_RESOURCE, R_SCOPE_NAME, R_SCOPE_VERSION };
static long long g_epoch_us;   /* _rows._PG_EPOCH_US: PostgreSQL's epoch in Unix microseconds */
static PyObject *g_stream_key, *g_sequence_key, *g_prev_key, *g_event_key;
static PyObject *g_typed_set;  /* frozenset of the attributes that have a column */
static PyObject *g_str_names;  /* tuple: the string-typed attributes, in column order */
static PyObject *g_empty;      /* _prepare.JSONB_EMPTY */
static PyObject *g_hash_key;   /* "audit.chain.hash" */
static PyObject *g_duration;   /* "audit.duration_ms" */
static PyObject *g_ok;         /* "ok" */
static PyObject *g_option_kw;  /* ("option",) */

/* Interned attribute names of Prepared and Record. */
static PyObject *s_rec, *s_stamp, *s_tenant, *s_service_name, *s_instance, *s_resource_jsonb,
    *s_sequence, *s_computed, *s_row, *s_time_unix_nano, *s_observed_unix_nano, *s_event_name,
    *s_severity_number, *s_severity_text, *s_body, *s_trace_id, *s_span_id, *s_attributes,
    *s_scope_name, *s_scope_version, *s_hexdigest, *s_resource, *s_claimed, *s_prev;
/* Keys of the canonical form, in the order chain.canonical_bytes writes them (orjson sorts anyway). */
static PyObject *k_attributes, *k_body, *k_event_name, *k_severity_number, *k_span_id,
    *k_time_unix_nano, *k_trace_id;

static int
intern(PyObject **slot, const char *text)
{
    *slot = PyUnicode_InternFromString(text);
    return *slot == NULL ? -1 : 0;
}

static int
init_names(void)
{
    return intern(&s_rec, "rec") || intern(&s_stamp, "stamp") || intern(&s_tenant, "tenant")
        || intern(&s_service_name, "service_name") || intern(&s_instance, "instance")
        || intern(&s_resource_jsonb, "resource_jsonb") || intern(&s_sequence, "sequence")
        || intern(&s_computed, "computed") || intern(&s_row, "row")
        || intern(&s_time_unix_nano, "time_unix_nano")
        || intern(&s_observed_unix_nano, "observed_unix_nano")
        || intern(&s_event_name, "event_name") || intern(&s_severity_number, "severity_number")
        || intern(&s_severity_text, "severity_text") || intern(&s_body, "body")
        || intern(&s_trace_id, "trace_id") || intern(&s_span_id, "span_id")
        || intern(&s_attributes, "attributes") || intern(&s_scope_name, "scope_name")
        || intern(&s_scope_version, "scope_version") || intern(&s_hexdigest, "hexdigest")
        || intern(&s_resource, "resource") || intern(&s_claimed, "claimed") || intern(&s_prev, "prev")
        || intern(&k_attributes, "attributes") || intern(&k_body, "body")
        || intern(&k_event_name, "event_name") || intern(&k_severity_number, "severity_number")
        || intern(&k_span_id, "span_id") || intern(&k_time_unix_nano, "time_unix_nano")
        || intern(&k_trace_id, "trace_id") || intern(&g_ok, "ok");
}

/* The contract's attribute names, which the store looks up, as the interned strings its lookups
 * use: a key read from the wire that is one of them becomes that very object, so no new string is
 * made per record and each later lookup matches by identity. */
enum { MAX_KNOWN = 32 };
static PyObject *g_known[MAX_KNOWN];
static int g_n_known;

static int
learn(PyObject *name)
{
    if (g_n_known == MAX_KNOWN || !PyUnicode_CheckExact(name) || !PyUnicode_IS_ASCII(name)) {
        return 0;
    }
    Py_INCREF(name);
    PyUnicode_InternInPlace(&name);
    g_known[g_n_known++] = name;
    return 0;
}

static void
replace(PyObject **slot, PyObject *value)
{
    Py_XINCREF(value);
    Py_XSETREF(*slot, value);
}

PyDoc_STRVAR(configure_doc,
"configure(*, dumps, sort_keys, sha256, jsonb, fallback, typed, str_names, empty, hash_key, duration,\n"
"          prepare, facts, prepared, record, epoch_us, keys)\n"
"--\n\n"
"Hand the fast path the Python objects it must agree with, so there is one definition of each.");

static PyObject *
configure(PyObject *self, PyObject *args, PyObject *kwargs)
{
    (void)self;
    static char *kwlist[] = {"dumps", "sort_keys", "sha256", "jsonb", "fallback", "typed", "str_names",
                             "empty", "hash_key", "duration", "prepare", "facts", "prepared",
                             "record", "epoch_us", "keys", NULL};
    PyObject *dumps, *sort_keys, *sha256, *jsonb, *fallback, *typed, *str_names, *empty, *hash_key,
        *duration, *prepare, *facts, *prepared, *record, *keys;
    long long epoch_us;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "$OOOOOO!O!O!UUOOOOLO!:configure", kwlist, &dumps,
                                     &sort_keys, &sha256, &jsonb, &fallback, &PyFrozenSet_Type,
                                     &typed, &PyTuple_Type, &str_names, &PyBytes_Type, &empty,
                                     &hash_key, &duration, &prepare, &facts, &prepared, &record,
                                     &epoch_us, &PyTuple_Type, &keys)) {
        return NULL;
    }
    if (PyTuple_GET_SIZE(keys) != 4) {
        PyErr_SetString(PyExc_ValueError, "keys: stream id, sequence, chain prev and event id names");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < 4; i++) {
        if (!PyUnicode_CheckExact(PyTuple_GET_ITEM(keys, i))) {
            PyErr_SetString(PyExc_TypeError, "keys must hold str");
            return NULL;
        }
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(str_names); i++) {
        if (!PyUnicode_CheckExact(PyTuple_GET_ITEM(str_names, i))) {
            PyErr_SetString(PyExc_TypeError, "str_names must hold str");
            return NULL;
        }
    }
    replace(&g_stream_key, PyTuple_GET_ITEM(keys, 0));
    replace(&g_sequence_key, PyTuple_GET_ITEM(keys, 1));
    replace(&g_prev_key, PyTuple_GET_ITEM(keys, 2));
    replace(&g_event_key, PyTuple_GET_ITEM(keys, 3));
    replace(&g_prepare_py, prepare);
    replace(&g_facts, facts);
    replace(&g_prepared, prepared);
    if (layout_of(prepared, PREPARED_FIELDS, 13, &g_prepared_layout) < 0) {
        return NULL;
    }
    replace(&g_record, record);
    if (layout_of(record, RECORD_FIELDS, 12, &g_record_layout) < 0) {
        Py_CLEAR(g_record);
        return NULL;
    }
    g_epoch_us = epoch_us;
    PyObject *option = PyUnicode_InternFromString("option");
    PyObject *option_kw = option == NULL ? NULL : PyTuple_Pack(1, option);
    Py_XDECREF(option);
    if (option_kw == NULL) {
        return NULL;
    }
    Py_XSETREF(g_option_kw, option_kw);
    replace(&g_dumps, dumps);
    replace(&g_sort_keys, sort_keys);
    replace(&g_sha256, sha256);
    replace(&g_jsonb, jsonb);
    replace(&g_fallback, fallback);
    replace(&g_typed_set, typed);
    replace(&g_str_names, str_names);
    for (int i = 0; i < g_n_known; i++) {
        Py_CLEAR(g_known[i]);
    }
    g_n_known = 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(str_names); i++) {
        learn(PyTuple_GET_ITEM(str_names, i));
    }
    learn(duration);
    learn(PyTuple_GET_ITEM(keys, 1)); /* audit.sequence */
    learn(hash_key);
    replace(&g_empty, empty);
    replace(&g_hash_key, hash_key);
    replace(&g_duration, duration);
    Py_RETURN_NONE;
}

/* The canonical bytes of a record, exactly as chain.canonical_bytes makes them (the same call). */
static PyObject *
canonical(PyObject *rec, PyObject *attrs)
{
    PyObject *hashed = PyDict_Copy(attrs);
    if (hashed == NULL) {
        return NULL;
    }
    if (PyDict_DelItem(hashed, g_hash_key) < 0) {
        Py_DECREF(hashed);
        return NULL;
    }
    PyObject *doc = PyDict_New();
    if (doc == NULL) {
        Py_DECREF(hashed);
        return NULL;
    }
    int failed = PyDict_SetItem(doc, k_attributes, hashed) < 0;
    Py_DECREF(hashed);
    PyObject *const names[] = {s_body, s_event_name, s_severity_number, s_span_id, s_time_unix_nano,
                               s_trace_id};
    const int fields[] = {R_BODY, R_EVENT_NAME, R_SEVERITY_NUMBER, R_SPAN_ID, R_TIME_UNIX_NANO, R_TRACE_ID};
    PyObject *const keys[] = {k_body, k_event_name, k_severity_number, k_span_id, k_time_unix_nano,
                              k_trace_id};
    for (size_t i = 0; !failed && i < sizeof(names) / sizeof(names[0]); i++) {
        PyObject *value = field(rec, &g_record_layout, fields[i], names[i]);
        failed = value == NULL || PyDict_SetItem(doc, keys[i], value) < 0;
        Py_XDECREF(value);
    }
    if (failed) {
        Py_DECREF(doc);
        return NULL;
    }
    PyObject *call[] = {doc, g_sort_keys};
    PyObject *out = PyObject_Vectorcall(g_dumps, call, 1, g_option_kw);
    Py_DECREF(doc);
    return out;
}

static PyObject *
hex_sha256(PyObject *data)
{
    PyObject *h = PyObject_CallOneArg(g_sha256, data);
    if (h == NULL) {
        return NULL;
    }
    PyObject *out = PyObject_CallMethodNoArgs(h, s_hexdigest);
    Py_DECREF(h);
    return out;
}

/* The JSONB remainder: the attributes without a column (none, in the common case). */
static PyObject *
untyped_rest(PyObject *attrs)
{
    PyObject *rest = PyDict_New();
    if (rest == NULL) {
        return NULL;
    }
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(attrs, &pos, &key, &value)) {
        int typed = PySet_Contains(g_typed_set, key);
        if (typed < 0 || (!typed && PyDict_SetItem(rest, key, value) < 0)) {
            Py_DECREF(rest);
            return NULL;
        }
    }
    PyObject *out = PyObject_CallOneArg(g_jsonb, rest);
    Py_DECREF(rest);
    return out;
}

/* ---- prepare: the cheap checks ---------------------------------------------------------------- */

/* The lowercase hex digits, as a table: a hash's 64 characters are then checked without a branch each,
   and digits and letters mixed at random made those branches mispredict. */
static const unsigned char lower_hex[256] = {
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1,
    ['8'] = 1, ['9'] = 1, ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1,
};

/* 64 lowercase hex digits, as _prepare._is_hash wants. */
static int
is_hash(PyObject *v)
{
    if (!PyUnicode_CheckExact(v) || PyUnicode_GET_LENGTH(v) != 64
        || PyUnicode_KIND(v) != PyUnicode_1BYTE_KIND) {
        return 0;
    }
    const Py_UCS1 *c = PyUnicode_1BYTE_DATA(v);
    unsigned char all = 1;
    for (int i = 0; i < 64; i++) {
        all &= lower_hex[c[i]];
    }
    return all;
}

/* A str without NUL: 1 yes, 0 no (or not a str), -1 error. */
static int
clean_text(PyObject *v)
{
    if (!PyUnicode_Check(v)) {
        return 0;
    }
    Py_ssize_t at = PyUnicode_FindChar(v, 0, 0, PyUnicode_GET_LENGTH(v), 1);
    return at == -2 ? -1 : at == -1;
}

/* An int in 0 .. 2**63-1: its value, or -1 when it is not one (no exception left set). */
static long long
bigint(PyObject *v)
{
    if (!PyLong_Check(v)) {
        return -1;
    }
    int overflow;
    long long n = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (n == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    return overflow ? -1 : n;
}

/* A field of a record, owned by `keep` until the caller releases it. */
static PyObject *
get(PyObject *rec, int i, PyObject *name, PyObject **keep, int *n_keep)
{
    PyObject *v = field(rec, &g_record_layout, i, name);
    if (v != NULL) {
        keep[(*n_keep)++] = v;
    }
    return v;
}

PyDoc_STRVAR(prepare_doc,
"prepare(index, rec, scope_tenant, resources=None, /)\n--\n\n"
"Check one audit record against the contract, as _prepare.prepare_python does; any refusal is\n"
"worded by prepare_python itself.");

static PyObject *
prepare(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 3 && nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "prepare(index, rec, scope_tenant, resources=None)");
        return NULL;
    }
    if (g_prepare_py == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_native.configure() was not called");
        return NULL;
    }
    PyObject *index = args[0], *rec = args[1], *scope_tenant = args[2];
    PyObject *resources = nargs == 4 ? args[3] : Py_None;
    PyObject *keep[16];
    int n_keep = 0;
    PyObject *result = NULL, *facts = NULL;
    PyObject *attrs = get(rec, R_ATTRIBUTES, s_attributes, keep, &n_keep);
    if (attrs == NULL) {
        goto done;
    }
    if (!PyDict_CheckExact(attrs)) {
        goto python;
    }
    PyObject *stream = PyDict_GetItemWithError(attrs, g_stream_key);
    PyObject *seq = stream == NULL ? NULL : PyDict_GetItemWithError(attrs, g_sequence_key);
    PyObject *prev = seq == NULL ? NULL : PyDict_GetItemWithError(attrs, g_prev_key);
    PyObject *claimed = prev == NULL ? NULL : PyDict_GetItemWithError(attrs, g_hash_key);
    PyObject *event = claimed == NULL ? NULL : PyDict_GetItemWithError(attrs, g_event_key);
    if (event == NULL) {
        if (PyErr_Occurred()) {
            goto done;
        }
        goto python;
    }
    /* owned from here on, whatever the code called below does to the dict */
    PyObject *const owned[] = {stream, seq, prev, claimed, event};
    for (int i = 0; i < 5; i++) {
        keep[n_keep++] = Py_NewRef(owned[i]);
    }
    /* exact types only: the Python twin compares what a subclass might override */
    if (!PyUnicode_CheckExact(stream) || PyUnicode_GET_LENGTH(stream) == 0 || !PyLong_CheckExact(seq)) {
        goto python;
    }
    long long sequence = bigint(seq);
    if (sequence < 1 || !PyUnicode_CheckExact(event) || !is_hash(prev) || !is_hash(claimed)) {
        goto python;
    }
    /* audit.event.id must be "<stream>:<sequence>" */
    PyObject *expected = PyUnicode_FromFormat("%U:%lld", stream, sequence);
    if (expected == NULL) {
        goto done;
    }
    int same = PyUnicode_Compare(expected, event) == 0;
    Py_DECREF(expected);
    if (PyErr_Occurred()) {
        goto done;
    }
    if (!same) {
        goto python;
    }
    PyObject *body = get(rec, R_BODY, s_body, keep, &n_keep);
    PyObject *t = body == NULL ? NULL : get(rec, R_TIME_UNIX_NANO, s_time_unix_nano, keep, &n_keep);
    PyObject *observed = t == NULL ? NULL
        : get(rec, R_OBSERVED_UNIX_NANO, s_observed_unix_nano, keep, &n_keep);
    PyObject *severity = observed == NULL ? NULL
        : get(rec, R_SEVERITY_NUMBER, s_severity_number, keep, &n_keep);
    PyObject *severity_text = severity == NULL ? NULL
        : get(rec, R_SEVERITY_TEXT, s_severity_text, keep, &n_keep);
    PyObject *scope_name = severity_text == NULL ? NULL
        : get(rec, R_SCOPE_NAME, s_scope_name, keep, &n_keep);
    PyObject *scope_version = scope_name == NULL ? NULL
        : get(rec, R_SCOPE_VERSION, s_scope_version, keep, &n_keep);
    PyObject *resource = scope_version == NULL ? NULL : get(rec, R_RESOURCE, s_resource, keep, &n_keep);
    if (resource == NULL) {
        goto done;
    }
    if (body != Py_None && !PyUnicode_Check(body)) {
        goto python;
    }
    long long time_ns = bigint(t), observed_ns = bigint(observed), level = bigint(severity);
    if (time_ns < 0 || observed_ns < 0 || level < 0 || level > 24) {
        goto python;
    }
    PyObject *const texts[] = {severity_text, scope_name, scope_version};
    for (int i = 0; i < 3; i++) {
        int clean = clean_text(texts[i]);
        if (clean < 0) {
            goto done;
        }
        if (!clean) {
            goto python;
        }
    }
    long long moment = time_ns ? time_ns : observed_ns;
    if (moment == 0) {
        goto python; /* no time at all: the Python twin stamps it with the clock */
    }
    /* a request's records share a few resources: read each once */
    if (resources != Py_None) {
        if (!PyDict_CheckExact(resources)) {
            goto python;
        }
        PyObject *key = PyLong_FromVoidPtr(resource);
        if (key == NULL) {
            goto done;
        }
        facts = PyDict_GetItemWithError(resources, key);
        if (facts != NULL) {
            Py_INCREF(facts);
        }
        else if (!PyErr_Occurred() && (facts = PyObject_CallOneArg(g_facts, resource)) != NULL
                 && PyDict_SetItem(resources, key, facts) < 0) {
            Py_CLEAR(facts);
        }
        Py_DECREF(key);
    }
    else {
        facts = PyObject_CallOneArg(g_facts, resource);
    }
    if (facts == NULL) {
        goto done;
    }
    if (!PyTuple_CheckExact(facts) || PyTuple_GET_SIZE(facts) != 5 || PyTuple_GET_ITEM(facts, 0) != Py_None) {
        goto python; /* a resource that cannot be stored */
    }
    PyObject *tenant = PyTuple_GET_ITEM(facts, 1);
    if (scope_tenant != Py_None) {
        if (tenant != Py_None) {
            int same_tenant = PyObject_RichCompareBool(tenant, scope_tenant, Py_EQ);
            if (same_tenant < 0) {
                goto done;
            }
            if (!same_tenant) {
                goto python;
            }
        }
        tenant = scope_tenant;
    }
    PyObject *stamp = PyLong_FromLongLong(moment / 1000 - g_epoch_us);
    if (stamp == NULL) {
        goto done;
    }
    PyObject *row = PyList_New(0);
    PyObject *computed = PyUnicode_New(0, 0);
    if (row != NULL && computed != NULL) {
        PyObject *fields[] = {index, stream, seq, prev, claimed, tenant, stamp,
                              PyTuple_GET_ITEM(facts, 2), PyTuple_GET_ITEM(facts, 3),
                              PyTuple_GET_ITEM(facts, 4), rec, computed, row};
        /* without the plain layout, the constructor takes the eleven without defaults */
        result = g_prepared_layout.type != NULL ? make(&g_prepared_layout, g_prepared, fields, 13)
                                                : PyObject_Vectorcall(g_prepared, fields, 11, NULL);
    }
    Py_XDECREF(row);
    Py_XDECREF(computed);
    Py_DECREF(stamp);
    goto done;
python:
    result = PyObject_Vectorcall(g_prepare_py, args, (size_t)nargs, NULL);
done:
    Py_XDECREF(facts);
    for (int i = 0; i < n_keep; i++) {
        Py_DECREF(keep[i]);
    }
    return result;
}


enum { N_HEAD = 15, N_TAIL = 3 };

PyDoc_STRVAR(finish_doc,
"finish(p, /)\n--\n\n"
"Recompute a prepared record's hash and build its row, as _prepare.finish_python does.");

static PyObject *
finish(PyObject *self, PyObject *p)
{
    (void)self;
    if (g_fallback == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_native.configure() was not called");
        return NULL;
    }
    PyObject *rec = NULL, *attrs = NULL, *canon = NULL, *computed = NULL, *row = NULL, *rest = NULL;
    PyObject *result = NULL;
    Py_ssize_t n_str = PyTuple_GET_SIZE(g_str_names);
    rec = field(p, &g_prepared_layout, P_REC, s_rec);
    if (rec == NULL) {
        goto done;
    }
    attrs = field(rec, &g_record_layout, R_ATTRIBUTES, s_attributes);
    if (attrs == NULL) {
        goto done;
    }
    if (!PyDict_CheckExact(attrs)) {
        goto python;
    }
    canon = canonical(rec, attrs);
    if (canon == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_TypeError) && !PyErr_ExceptionMatches(PyExc_ValueError)) {
            goto done;
        }
        PyErr_Clear(); /* the Python twin words the refusal */
        goto python;
    }
    const char *bytes = PyBytes_AS_STRING(canon);
    Py_ssize_t size = PyBytes_GET_SIZE(canon);
    if (memchr(bytes, '\\', (size_t)size) != NULL) {
        goto python; /* an escape: possibly a NUL, which the Python twin checks exactly */
    }
    /* the typed columns: strings (or absent), then the duration (a float or absent) */
    row = PyList_New(N_HEAD + n_str + 2 + N_TAIL);
    if (row == NULL) {
        goto done;
    }
    Py_ssize_t present = 1; /* audit.sequence, always there */
    for (Py_ssize_t i = 0; i < n_str; i++) {
        PyObject *v = PyDict_GetItemWithError(attrs, PyTuple_GET_ITEM(g_str_names, i));
        if (v == NULL) {
            if (PyErr_Occurred()) {
                goto done;
            }
            v = Py_None;
        }
        else if (!PyUnicode_CheckExact(v)) {
            goto python; /* kept in JSONB exactly as sent: the Python twin sorts that out */
        }
        else {
            present++;
        }
        Py_INCREF(v);
        PyList_SET_ITEM(row, N_HEAD + i, v);
    }
    PyObject *duration = PyDict_GetItemWithError(attrs, g_duration);
    if (duration == NULL) {
        if (PyErr_Occurred()) {
            goto done;
        }
        duration = Py_None;
    }
    else if (!PyFloat_CheckExact(duration)) {
        goto python;
    }
    else {
        present++;
    }
    Py_INCREF(duration);
    PyList_SET_ITEM(row, N_HEAD + n_str, duration);
    computed = hex_sha256(canon);
    if (computed == NULL) {
        goto done;
    }
    if (PyDict_GET_SIZE(attrs) == present) {
        rest = Py_NewRef(g_empty);
    }
    else if ((rest = untyped_rest(attrs)) == NULL) {
        goto done;
    }
    /* the row's head: the id (drawn later), then fields of p (the prepared facts: stamp, tenant,
       service, instance) and of rec, each a field index of its class */
    PyObject *const head[] = {NULL, s_stamp, s_time_unix_nano, s_observed_unix_nano, s_event_name,
                              s_severity_number, s_severity_text, s_body, s_trace_id, s_span_id,
                              s_tenant, s_service_name, s_instance, s_scope_name, s_scope_version};
    const int head_field[] = {0, P_STAMP, R_TIME_UNIX_NANO, R_OBSERVED_UNIX_NANO, R_EVENT_NAME,
                              R_SEVERITY_NUMBER, R_SEVERITY_TEXT, R_BODY, R_TRACE_ID, R_SPAN_ID,
                              P_TENANT, P_SERVICE_NAME, P_INSTANCE, R_SCOPE_NAME, R_SCOPE_VERSION};
    const unsigned char from_p[] = {0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0};
    for (Py_ssize_t i = 0; i < N_HEAD; i++) {
        PyObject *v = head[i] == NULL ? Py_NewRef(Py_None)
            : from_p[i] ? field(p, &g_prepared_layout, head_field[i], head[i])
                        : field(rec, &g_record_layout, head_field[i], head[i]);
        if (v == NULL) {
            goto done;
        }
        PyList_SET_ITEM(row, i, v);
    }
    PyObject *seq = field(p, &g_prepared_layout, P_SEQUENCE, s_sequence);
    if (seq == NULL) {
        goto done;
    }
    PyList_SET_ITEM(row, N_HEAD + n_str + 1, seq);
    PyObject *resource = field(p, &g_prepared_layout, P_RESOURCE_JSONB, s_resource_jsonb);
    if (resource == NULL) {
        goto done;
    }
    PyList_SET_ITEM(row, N_HEAD + n_str + 2, rest);
    rest = NULL;
    PyList_SET_ITEM(row, N_HEAD + n_str + 3, resource);
    PyList_SET_ITEM(row, N_HEAD + n_str + 4, Py_NewRef(g_ok));
    if (set_field(p, &g_prepared_layout, P_COMPUTED, s_computed, computed) < 0
        || set_field(p, &g_prepared_layout, P_ROW, s_row, row) < 0) {
        goto done;
    }
    result = Py_NewRef(Py_None);
    goto done;
python:
    result = PyObject_CallOneArg(g_fallback, p);
done:
    Py_XDECREF(rec);
    Py_XDECREF(attrs);
    Py_XDECREF(canon);
    Py_XDECREF(computed);
    Py_XDECREF(row); /* a half-filled list holds NULLs, which list_dealloc skips */
    Py_XDECREF(rest);
    return result;
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

/* The size of one value in binary COPY (length word included), or -1 with an exception set. */
static Py_ssize_t
field_size(PyObject *v, char code, Py_ssize_t column)
{
    if (v == Py_None) {
        return 4;
    }
    switch (code) {
    case 'q':
    case 'h':
        if (!PyLong_Check(v)) {
            break;
        }
        return code == 'q' ? 12 : 6;
    case 'd':
        if (!PyFloat_Check(v)) {
            break;
        }
        return 12;
    case 't': {
        if (!PyUnicode_Check(v)) {
            break;
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
        if (n > INT32_MAX - 4) {
            PyErr_Format(PyExc_OverflowError, "column %zd: value too long for COPY", column);
            return -1;
        }
        return 4 + n;
    }
    case 'b':
        if (!PyBytes_Check(v)) {
            break;
        }
        if (PyBytes_GET_SIZE(v) > INT32_MAX - 4) {
            PyErr_Format(PyExc_OverflowError, "column %zd: value too long for COPY", column);
            return -1;
        }
        return 4 + PyBytes_GET_SIZE(v);
    default:
        PyErr_Format(PyExc_ValueError, "unknown type code %c", code);
        return -1;
    }
    /* the type's name only: a value never goes into an error message */
    PyErr_Format(PyExc_TypeError, "column %zd: type code %c cannot take %.100s", column, code,
                 Py_TYPE(v)->tp_name);
    return -1;
}

/* Write one value (its size already checked by field_size); returns the bytes written or -1. */
static Py_ssize_t
put_field(char *out, PyObject *v, char code, Py_ssize_t column)
{
    if (v == Py_None) {
        put_u32(out, 0xFFFFFFFFu);
        return 4;
    }
    switch (code) {
    case 'q': {
        long long n = PyLong_AsLongLong(v);
        if (n == -1 && PyErr_Occurred()) {
            return -1;
        }
        put_u32(out, 8);
        put_u64(out + 4, (uint64_t)n);
        return 12;
    }
    case 'h': {
        long n = PyLong_AsLong(v);
        if (n == -1 && PyErr_Occurred()) {
            return -1;
        }
        if (n < INT16_MIN || n > INT16_MAX) {
            PyErr_Format(PyExc_OverflowError, "column %zd: out of the smallint range", column);
            return -1;
        }
        put_u32(out, 2);
        put_u16(out + 4, (uint16_t)(int16_t)n);
        return 6;
    }
    case 'd': {
        double d = PyFloat_AS_DOUBLE(v);
        uint64_t bits;
        memcpy(&bits, &d, sizeof bits);
        put_u32(out, 8);
        put_u64(out + 4, bits);
        return 12;
    }
    case 't': {
        Py_ssize_t n;
        const char *text = PyUnicode_AsUTF8AndSize(v, &n); /* cached by field_size */
        if (text == NULL) {
            return -1;
        }
        put_u32(out, (uint32_t)n);
        memcpy(out + 4, text, (size_t)n);
        return 4 + n;
    }
    default: /* 'b' */
        put_u32(out, (uint32_t)PyBytes_GET_SIZE(v));
        memcpy(out + 4, PyBytes_AS_STRING(v), (size_t)PyBytes_GET_SIZE(v));
        return 4 + PyBytes_GET_SIZE(v);
    }
}

/* ---- the chain walk's common case ------------------------------------------------------------ */

PyDoc_STRVAR(walk_plain_doc,
"walk_plain(batch, head_seq, head_hash, genesis, /)\n--\n\n"
"Finish one stream's records (sorted by sequence) and say whether they are the plain case: the\n"
"next sequences after the head, each hash recomputed as claimed and linked to the one before.\n"
"True: every record is finished and stored as \"ok\", with no finding. False: the Python walk\n"
"must judge the batch (it finishes the records again).");

static PyObject *
walk_plain(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 4 || !PyList_CheckExact(args[0]) || !PyLong_Check(args[1])
        || !PyUnicode_CheckExact(args[2]) || !PyUnicode_CheckExact(args[3])) {
        PyErr_SetString(PyExc_TypeError, "walk_plain(batch, head_seq, head_hash, genesis)");
        return NULL;
    }
    PyObject *batch = args[0];
    long long expected = PyLong_AsLongLong(args[1]);
    if (expected == -1 && PyErr_Occurred()) {
        return NULL;
    }
    /* the hash the first record must link to: the head's, or the genesis value before any record */
    PyObject *link = Py_NewRef(expected ? args[2] : args[3]);
    int plain = 1;
    for (Py_ssize_t i = 0; plain == 1 && i < PyList_GET_SIZE(batch); i++) {
        PyObject *p = Py_NewRef(PyList_GET_ITEM(batch, i));
        PyObject *seq = field(p, &g_prepared_layout, P_SEQUENCE, s_sequence);
        long long n = seq == NULL ? -1 : PyLong_AsLongLong(seq);
        Py_XDECREF(seq);
        PyObject *reason = NULL, *computed = NULL, *claimed = NULL, *prev = NULL;
        if (n == -1 && PyErr_Occurred()) {
            plain = -1;
        }
        else if (n != ++expected) {
            plain = 0; /* a gap, a duplicate or a late record */
        }
        else if ((reason = finish(NULL, p)) == NULL) {
            plain = -1;
        }
        else if (reason != Py_None) {
            plain = 0; /* refused */
        }
        else if ((computed = field(p, &g_prepared_layout, P_COMPUTED, s_computed)) == NULL
                 || (claimed = field(p, &g_prepared_layout, P_CLAIMED, s_claimed)) == NULL
                 || (prev = field(p, &g_prepared_layout, P_PREV, s_prev)) == NULL) {
            plain = -1;
        }
        else {
            int same_hash = PyUnicode_Compare(computed, claimed) == 0;
            int linked = PyUnicode_Compare(prev, link) == 0;
            if (PyErr_Occurred()) {
                plain = -1;
            }
            else if (!same_hash || !linked) {
                plain = 0; /* a hash mismatch or a chain break: findings for the Python walk */
            }
            else {
                Py_SETREF(link, Py_NewRef(claimed));
            }
        }
        Py_XDECREF(reason);
        Py_XDECREF(computed);
        Py_XDECREF(claimed);
        Py_XDECREF(prev);
        Py_DECREF(p);
    }
    Py_DECREF(link);
    if (plain < 0) {
        return NULL;
    }
    return PyBool_FromLong(plain);
}

PyDoc_STRVAR(encode_rows_doc,
"encode_rows(rows, types, /)\n--\n\n"
"Rows (lists) as binary COPY tuples, one type code per column: q int8, h int2, d float8, t text,\n"
"b bytes as they are; psycopg's row formatter does the same through several Python layers.");

static PyObject *
encode_rows(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 2 || !PyList_Check(args[0]) || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "encode_rows(rows: list, types: bytes)");
        return NULL;
    }
    PyObject *rows = args[0];
    const char *codes = PyBytes_AS_STRING(args[1]);
    Py_ssize_t width = PyBytes_GET_SIZE(args[1]);
    if (width > INT16_MAX) {
        PyErr_SetString(PyExc_ValueError, "too many columns");
        return NULL;
    }
    Py_ssize_t n_rows = PyList_GET_SIZE(rows);
    Py_ssize_t total = 0;
    for (Py_ssize_t r = 0; r < n_rows; r++) {
        PyObject *row = PyList_GET_ITEM(rows, r);
        if (!PyList_Check(row) || PyList_GET_SIZE(row) != width) {
            PyErr_Format(PyExc_TypeError, "row %zd: expected a list of %zd values", r, width);
            return NULL;
        }
        total += 2;
        for (Py_ssize_t c = 0; c < width; c++) {
            Py_ssize_t n = field_size(PyList_GET_ITEM(row, c), codes[c], c);
            if (n < 0) {
                return NULL;
            }
            total += n;
        }
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL) {
        return NULL;
    }
    /* no Python code runs from here on (no callbacks, no GIL release): the rows cannot change */
    char *at = PyBytes_AS_STRING(out);
    for (Py_ssize_t r = 0; r < n_rows; r++) {
        PyObject *row = PyList_GET_ITEM(rows, r);
        put_u16(at, (uint16_t)width);
        at += 2;
        for (Py_ssize_t c = 0; c < width; c++) {
            Py_ssize_t n = put_field(at, PyList_GET_ITEM(row, c), codes[c], c);
            if (n < 0) {
                Py_DECREF(out);
                return NULL;
            }
            at += n;
        }
    }
    assert(at == PyBytes_AS_STRING(out) + total);
    return out;
}


/* ---- OTLP protobuf: ExportLogsServiceRequest to records ----------------------------------------
 *
 * Why: the generated protobuf classes (upb) make a Python object for every attribute and value
 * before _otlp copies them into dicts: 13 to 17 µs per audit record, more than the rest of ingest.
 * This reads the wire format once and makes only the dicts and strings the records keep.
 *
 * Only the plain form is read here. Anything else (a field sent twice, which protobuf merges or
 * overrides after checking the first; a known field with another wire type; groups; nesting deeper
 * than MAX_DEPTH; invalid UTF-8; the scope's attributes or the resource's entity references, whose
 * strings this does not read; a truncated or malformed message) returns None, and _otlp decodes
 * the request with the generated classes instead, which either read it the same way or refuse it
 * with their own words.
 * Every read is bounds-checked against the end of its enclosing message.
 */

enum { MAX_DEPTH = 32 };

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

/* Sentinel for "leave this request to the generated classes" (no exception set). */
#define UNSURE Py_NotImplemented

static PyObject *
text(span v)
{
    PyObject *out = PyUnicode_DecodeUTF8((const char *)v.p, v.end - v.p, NULL);
    if (out == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
        PyErr_Clear();
        return Py_NewRef(UNSURE);
    }
    return out;
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

static PyObject *
key_text(span v)
{
    Py_ssize_t n = v.end - v.p;
    for (int i = 0; i < g_n_known; i++) {
        PyObject *k = g_known[i];
        if (PyUnicode_GET_LENGTH(k) == n && memcmp(PyUnicode_1BYTE_DATA(k), v.p, (size_t)n) == 0) {
            return Py_NewRef(k);
        }
    }
    return text(v);
}

static PyObject *g_b64encode; /* base64.b64encode, for bytes_value as _otlp._pb_value gives it */

/* The next occurrence of the length-delimited field `number` in m: 1 found (in *inner), 0 none left,
 * -1 not the plain form. Other fields are skipped, except `checked` (a string field the records do
 * not keep, whose UTF-8 is checked as the generated classes check it) and `refuse` (a field with
 * strings this does not read); 0 means neither. */
static int
next_of(span *m, uint32_t number, uint32_t checked, uint32_t refuse, span *inner)
{
    while (m->p < m->end) {
        uint32_t field;
        int wire;
        if (!tag(m, &field, &wire) || (refuse && field == refuse)) {
            return -1;
        }
        if (field == number) {
            return wire == 2 && delimited(m, inner) ? 1 : -1;
        }
        if (checked && field == checked) {
            span text_field;
            if (wire != 2 || !delimited(m, &text_field) || !valid_utf8(text_field)) {
                return -1;
            }
        }
        else if (!skip(m, wire)) {
            return -1;
        }
    }
    return 0;
}

static PyObject *any_value(span v, int depth);

/* KeyValueList / ArrayValue bodies: repeated field 1. */
static PyObject *kv_map(span m, int depth);

static PyObject *
array(span m, int depth)
{
    PyObject *out = PyList_New(0);
    span inner;
    int found = 0;
    while (out != NULL && (found = next_of(&m, 1, 0, 0, &inner)) == 1) {
        PyObject *item = any_value(inner, depth + 1);
        if (item == NULL || item == UNSURE) {
            Py_DECREF(out);
            return item;
        }
        int failed = PyList_Append(out, item);
        Py_DECREF(item);
        if (failed) {
            Py_CLEAR(out);
        }
    }
    if (out != NULL && found < 0) {
        Py_DECREF(out);
        return Py_NewRef(UNSURE);
    }
    return out;
}

/* One AnyValue as _otlp._pb_value gives it (None when no value is set). */
static PyObject *
any_value(span v, int depth)
{
    if (depth > MAX_DEPTH) {
        return Py_NewRef(UNSURE);
    }
    int kind = 0; /* the oneof's field number, 0: none */
    span body = {NULL, NULL};
    uint64_t scalar = 0;
    while (v.p < v.end) {
        uint32_t field;
        int wire;
        if (!tag(&v, &field, &wire)) {
            return Py_NewRef(UNSURE);
        }
        if (field >= 1 && field <= 8 && kind != 0) {
            /* a second value: the oneof keeps the last (merging a repeated sub-message), and the
             * generated classes still checked the first one. Not the plain form. */
            return Py_NewRef(UNSURE);
        }
        switch (field) {
        case 1: case 5: case 6: case 7: /* string, array, kvlist, bytes */
            if (wire != 2 || !delimited(&v, &body)) {
                return Py_NewRef(UNSURE);
            }
            kind = (int)field;
            break;
        case 2: case 3: case 8: /* bool, int, an index into a string table (read as no value) */
            if (wire != 0 || !varint(&v, &scalar)) {
                return Py_NewRef(UNSURE);
            }
            kind = (int)field;
            break;
        case 4: /* double */
            if (wire != 1 || !fixed64(&v, &scalar)) {
                return Py_NewRef(UNSURE);
            }
            kind = 4;
            break;
        default:
            if (!skip(&v, wire)) {
                return Py_NewRef(UNSURE);
            }
        }
    }
    switch (kind) {
    case 1:
        return text(body);
    case 2:
        return PyBool_FromLong(scalar != 0);
    case 3:
        return PyLong_FromLongLong((long long)scalar);
    case 4: {
        double d;
        memcpy(&d, &scalar, sizeof d);
        return PyFloat_FromDouble(d);
    }
    case 5:
        return array(body, depth);
    case 6:
        return kv_map(body, depth);
    case 7: {
        PyObject *raw = PyBytes_FromStringAndSize((const char *)body.p, body.end - body.p);
        if (raw == NULL) {
            return NULL;
        }
        PyObject *encoded = PyObject_CallOneArg(g_b64encode, raw);
        Py_DECREF(raw);
        if (encoded == NULL) {
            return NULL;
        }
        PyObject *out = PyUnicode_FromEncodedObject(encoded, "ascii", "strict");
        Py_DECREF(encoded);
        return out;
    }
    default:
        Py_RETURN_NONE;
    }
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

/* One KeyValue into a dict (a later key overwrites, as in _otlp). 1 ok, 0 unsure, -1 error. */
static int
key_value(PyObject *into, span kv, int depth)
{
    span f[2]; /* the key, the value */
    int has[2];
    if (!once_each(kv, 2, 0, f, has)) {
        return 0;
    }
    PyObject *k = has[0] ? key_text(f[0]) : PyUnicode_New(0, 0);
    if (k == NULL || k == UNSURE) {
        Py_XDECREF(k);
        return k == NULL ? -1 : 0;
    }
    PyObject *v = has[1] ? any_value(f[1], depth + 1) : Py_NewRef(Py_None);
    if (v == NULL || v == UNSURE) {
        Py_DECREF(k);
        Py_XDECREF(v);
        return v == NULL ? -1 : 0;
    }
    int failed = PyDict_SetItem(into, k, v);
    Py_DECREF(k);
    Py_DECREF(v);
    return failed ? -1 : 1;
}

/* A message's repeated KeyValue field (number `number`) as a dict; other fields are skipped, but
 * `refuse` (a field with strings this does not read and check, 0: none) makes it unsure. */
static PyObject *
attributes(span m, uint32_t number, uint32_t refuse, int depth)
{
    PyObject *out = PyDict_New();
    span inner;
    int found = 0, done = 1;
    while (out != NULL && done == 1 && (found = next_of(&m, number, 0, refuse, &inner)) == 1) {
        done = key_value(out, inner, depth);
        if (done < 0) {
            Py_CLEAR(out);
        }
    }
    if (out != NULL && (found < 0 || done == 0)) {
        Py_DECREF(out);
        return Py_NewRef(UNSURE);
    }
    return out;
}

static PyObject *
kv_map(span m, int depth)
{
    return attributes(m, 1, 0, depth + 1);
}

/* Bytes as lowercase hex, as bytes.hex() gives them. */
static PyObject *
hex_of(span b)
{
    static const char digits[] = "0123456789abcdef";
    Py_ssize_t n = b.end - b.p;
    PyObject *out = PyUnicode_New(2 * n, 127);
    if (out == NULL) {
        return NULL;
    }
    Py_UCS1 *o = PyUnicode_1BYTE_DATA(out);
    for (Py_ssize_t i = 0; i < n; i++) {
        o[2 * i] = (Py_UCS1)digits[b.p[i] >> 4];
        o[2 * i + 1] = (Py_UCS1)digits[b.p[i] & 15];
    }
    return out;
}

/* One LogRecord appended to `out` as a Record. 1 ok, 0 unsure, -1 error. */
static int
log_record(PyObject *out, span m, PyObject *resource, PyObject *scope_name, PyObject *scope_version)
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
            return 0;
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
        return 0;
    }
    PyObject *f[12] = {NULL};
    int result = -1;
    f[0] = PyLong_FromUnsignedLongLong(time);
    f[1] = PyLong_FromUnsignedLongLong(observed);
    f[2] = PyLong_FromLong((long)(int32_t)(uint32_t)severity); /* an int32 enum, truncated as upb does */
    f[3] = severity_text.p ? text(severity_text) : PyUnicode_New(0, 0);
    f[4] = has_body ? any_value(body, 1) : Py_NewRef(Py_None);
    f[5] = event_name.p ? text(event_name) : PyUnicode_New(0, 0);
    f[6] = trace.p ? hex_of(trace) : PyUnicode_New(0, 0);
    f[7] = span_id.p ? hex_of(span_id) : PyUnicode_New(0, 0);
    f[8] = attributes(attrs_at, 6, 0, 1);
    f[9] = Py_NewRef(resource);
    f[10] = Py_NewRef(scope_name);
    f[11] = Py_NewRef(scope_version);
    for (int i = 0; i < 12; i++) {
        if (f[i] == NULL) {
            goto done;
        }
    }
    for (int i = 0; i < 12; i++) {
        if (f[i] == UNSURE) {
            result = 0;
            goto done;
        }
    }
    PyObject *rec = make(&g_record_layout, g_record, f, 12);
    if (rec != NULL) {
        result = PyList_Append(out, rec) < 0 ? -1 : 1;
        Py_DECREF(rec);
    }
done:
    for (int i = 0; i < 12; i++) {
        Py_XDECREF(f[i]);
    }
    return result;
}

/* One ScopeLogs: its scope first (wherever it is on the wire), then its records in order. */
static int
scope_logs(PyObject *out, span m, PyObject *resource)
{
    span scope = {NULL, NULL}, f[2]; /* the scope; its name and version */
    int found, has[2];
    /* 3: the scope's attributes, which this does not read and check */
    if (!once_each(m, 1, 0, &scope, &found) || !once_each(scope, 2, 3, f, has)) {
        return 0;
    }
    PyObject *scope_name = has[0] ? text(f[0]) : PyUnicode_New(0, 0);
    PyObject *scope_version = has[1] ? text(f[1]) : PyUnicode_New(0, 0);
    int result = -1;
    if (scope_name == NULL || scope_version == NULL) {
        goto done;
    }
    if (scope_name == UNSURE || scope_version == UNSURE) {
        result = 0;
        goto done;
    }
    result = 1;
    span inner;
    int more;
    /* 2: the records; 3: the schema URL, checked */
    while (result == 1 && (more = next_of(&m, 2, 3, 0, &inner)) != 0) {
        result = more < 0 ? 0 : log_record(out, inner, resource, scope_name, scope_version);
    }
done:
    Py_XDECREF(scope_name);
    Py_XDECREF(scope_version);
    return result;
}

static int
resource_logs(PyObject *out, span m)
{
    span res = {NULL, NULL};
    int found;
    if (!once_each(m, 1, 0, &res, &found)) {
        return 0;
    }
    /* 3: entity references, strings this does not read */
    PyObject *resource = found ? attributes(res, 1, 3, 0) : PyDict_New();
    if (resource == NULL || resource == UNSURE) {
        Py_XDECREF(resource);
        return resource == NULL ? -1 : 0;
    }
    int result = 1, more;
    span inner;
    /* 2: the scopes' logs; 3: the schema URL, checked */
    while (result == 1 && (more = next_of(&m, 2, 3, 0, &inner)) != 0) {
        result = more < 0 ? 0 : scope_logs(out, inner, resource);
    }
    Py_DECREF(resource);
    return result;
}

PyDoc_STRVAR(decode_logs_doc,
"decode_logs(body, record, b64encode, /)\n--\n\n"
"An ExportLogsServiceRequest's records as _otlp.decode_protobuf makes them, or None when the\n"
"request is not in the plain form this reads (the generated classes then decode or refuse it).");

static PyObject *
decode_logs(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "decode_logs(body, record, b64encode)");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (args[1] != g_record) {
        replace(&g_record, args[1]);
        if (layout_of(g_record, RECORD_FIELDS, 12, &g_record_layout) < 0) {
            Py_CLEAR(g_record);
            PyBuffer_Release(&view);
            return NULL;
        }
    }
    replace(&g_b64encode, args[2]);
    span m = {(const unsigned char *)view.buf, (const unsigned char *)view.buf + view.len};
    PyObject *out = PyList_New(0);
    int result = out == NULL ? -1 : 1, more;
    span inner;
    while (result == 1 && (more = next_of(&m, 1, 0, 0, &inner)) != 0) {
        result = more < 0 ? 0 : resource_logs(out, inner);
    }
    PyBuffer_Release(&view);
    if (result == 1) {
        return out;
    }
    Py_XDECREF(out);
    if (result == 0) {
        Py_RETURN_NONE;
    }
    return NULL;
}

static PyMethodDef methods[] = {
    {"configure", (PyCFunction)(void (*)(void))configure, METH_VARARGS | METH_KEYWORDS, configure_doc},
    {"prepare", (PyCFunction)(void (*)(void))prepare, METH_FASTCALL, prepare_doc},
    {"finish", finish, METH_O, finish_doc},
    {"encode_rows", (PyCFunction)(void (*)(void))encode_rows, METH_FASTCALL, encode_rows_doc},
    {"walk_plain", (PyCFunction)(void (*)(void))walk_plain, METH_FASTCALL, walk_plain_doc},
    {"decode_logs", (PyCFunction)(void (*)(void))decode_logs, METH_FASTCALL, decode_logs_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "secret_audit.store._native",
    .m_doc = "The store's per-row ingest work in C, with a pure-Python twin for every function.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    if (init_names() < 0) {
        return NULL;
    }
    return PyModule_Create(&module);
}
