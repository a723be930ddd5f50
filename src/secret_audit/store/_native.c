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
 *
 * Its parts, one module: _native_decode.c (decode_logs), _native_values.c (AnyValue and attributes),
 * _native_wire.c (the protobuf wire format's plain form), _native_copy.c (encode_rows); _native.h, what
 * they share (the limits among it).
 */
#include "_native.h"

PyDoc_STRVAR(decode_logs_doc,
"decode_logs(body, names, kinds, /)\n--\n\n"
"An ExportLogsServiceRequest's records as _otlp.decode_protobuf_python makes them (tuples in the\n"
"order of _otlp.Record, the last one the typed columns: for each of names, the attribute's value if\n"
"it has the kind given for it in kinds, b't' str, b'd' float or b'q' int, else None), or None when\n"
"the request is not in the plain form this reads. Raises ValueError past one of the limits.");

PyDoc_STRVAR(encode_rows_doc,
"encode_rows(rows, codes, /)\n--\n\n"
"Rows (lists) as binary COPY tuples, one type code per column: q int8, h int2, d float8, t text,\n"
"b bytes as they are; psycopg's row formatter does the same through several Python layers.");

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
