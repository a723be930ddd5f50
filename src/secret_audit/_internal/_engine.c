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
 * Its parts, one module: _engine_otlp.c (a slot's records: canonical JSON, chain, LogRecord),
 * _engine_raw.c (runs of raw ring slots), _engine_sha256.c, _engine_float.c; _engine.h, what they share.
 */
#include "_engine.h"
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <limits.h>

static PyObject *sixty_four;

/* ---- stamp_slots --------------------------------------------------------------------------------- */

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

/* The arguments both calls share: stream constants, sequence, head, observed time, out. */
int
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
PyObject *
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

/* ---- the agent's malloc -------------------------------------------------------------------------- */

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
