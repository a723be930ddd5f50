/* The agent's engine, part: a record's duration as the canonical JSON writes it (float_json, for
 * stamp_slot), and float_text, the same for Python (tests/test_engine.py holds it to engine.float_json).
 */
#include "_engine.h"
#include <math.h>

static PyObject *orjson_dumps; /* the slow path of float_json: outside the range repr and orjson agree */

/* A duration as contract.canonical_bytes writes it; its length, or -1 with an exception set. */
Py_ssize_t
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

PyObject *
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
