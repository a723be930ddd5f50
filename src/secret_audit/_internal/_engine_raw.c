/* The agent's engine, part: a run of slots read as the ring holds them (ring.py's layout), never made
 * into tuples: resolve_raw finds each slot's shapes, stamp_raw stamps them as stamp_slots does.
 */
#include "_engine.h"

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
PyObject *
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
PyObject *
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
