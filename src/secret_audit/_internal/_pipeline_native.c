/* A redis-py pipeline's commands counted into Items, in C: the loop of redis_pipelines.count_python.
 *
 * Why: with an audit agent this loop runs on the caller's path, once per queued command (about
 * 0.3 µs each in Python on this machine, against 7-9 µs a GET takes in a pipeline); in-process it
 * runs on the worker, on the app's GIL all the same. Everything that decides anything stays Python,
 * passed in as callables: learning a (command, key) pair (entry_of), the single-command path
 * (general), making an Item (make). This file only walks the list, compares, looks up and counts.
 *
 * It uses the limited C API of Python 3.10 (one abi3 build serves every later Python), as the
 * store's _native.c does. Its pure-Python twin, count_python, is the reference: a property test
 * (tests/test_redis_pipeline_items.py) holds the two to each other.
 *
 * count(stack, got, entry_of, general, make, found, none, emptiable, args_of) -> list[[item, count]]
 * An entry is 0 (no secret key: skipped), 1 (the single-command path) or a tuple whose first three
 * items are the result function, the keys it is given, and the Items made so far by result word.
 */
#define Py_LIMITED_API 0x030A0000
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static PyObject *FOUND_WORD, *NOT_FOUND_WORD;

/* Replace *slot with a new strong reference to value (or NULL). */
static void
set_ref(PyObject **slot, PyObject *value)
{
    PyObject *old = *slot;
    Py_XINCREF(value);
    *slot = value;
    Py_XDECREF(old);
}

/* Add the general path's Items, each its own group (keyed by its id, as the twin does). */
static int
add_general(PyObject *groups, PyObject *general, PyObject *args, PyObject *reply)
{
    PyObject *items = PyObject_CallFunctionObjArgs(general, args, reply, NULL);
    if (items == NULL) {
        return -1;
    }
    PyObject *iter = PyObject_GetIter(items);
    Py_DECREF(items);
    if (iter == NULL) {
        return -1;
    }
    PyObject *one;
    while ((one = PyIter_Next(iter)) != NULL) {
        PyObject *key = PyLong_FromVoidPtr(one);
        PyObject *count = PyLong_FromLong(1);
        PyObject *group = (key && count) ? PyList_New(2) : NULL;
        if (group == NULL) {
            Py_XDECREF(key);
            Py_XDECREF(count);
            Py_DECREF(one);
            Py_DECREF(iter);
            return -1;
        }
        PyList_SetItem(group, 0, one); /* steals */
        PyList_SetItem(group, 1, count);
        int bad = PyDict_SetItem(groups, key, group);
        Py_DECREF(key);
        Py_DECREF(group);
        if (bad < 0) {
            Py_DECREF(iter);
            return -1;
        }
    }
    Py_DECREF(iter);
    return PyErr_Occurred() ? -1 : 0;
}

/* group[1] += 1 */
static int
bump(PyObject *group)
{
    PyObject *count = PyList_GetItem(group, 1);
    if (count == NULL) {
        return -1;
    }
    Py_ssize_t n = PyLong_AsSsize_t(count);
    if (n == -1 && PyErr_Occurred()) {
        return -1;
    }
    PyObject *next = PyLong_FromSsize_t(n + 1);
    if (next == NULL) {
        return -1;
    }
    return PyList_SetItem(group, 1, next);
}

/* The result word of one command: a new reference, or NULL with an exception that is no Exception. */
static PyObject *
word_of(PyObject *entry, PyObject *args, PyObject *reply, PyObject *found, PyObject *none, PyObject *emptiable)
{
    PyObject *result = PyTuple_GetItem(entry, 0);
    if (result == NULL) {
        return NULL;
    }
    if (result == found) {
        int empty = reply == Py_None;
        /* bytes, str and int (most replies) are no collection: the isinstance below is the slow part */
        if (!empty && !PyBytes_CheckExact(reply) && !PyUnicode_CheckExact(reply) && !PyLong_CheckExact(reply)) {
            int is = PyObject_IsInstance(reply, emptiable);
            if (is < 0) {
                return NULL;
            }
            if (is) {
                int truth = PyObject_IsTrue(reply);
                if (truth < 0) {
                    return NULL;
                }
                empty = !truth;
            }
        }
        PyObject *word = empty ? NOT_FOUND_WORD : FOUND_WORD;
        Py_INCREF(word);
        return word;
    }
    if (result == none) {
        Py_RETURN_NONE;
    }
    PyObject *keys = PyTuple_GetItem(entry, 1);
    if (keys == NULL) {
        return NULL;
    }
    PyObject *word = NULL;
    PyObject *said = PyObject_CallFunctionObjArgs(result, args, reply, keys, NULL);
    if (said != NULL) {
        int truth = PyObject_IsTrue(said);
        if (truth > 0) {
            word = PySequence_GetItem(said, 0);
        } else if (truth == 0) {
            word = Py_None;
            Py_INCREF(word);
        }
        Py_DECREF(said);
    }
    if (word == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) {
            return NULL;
        }
        PyErr_Clear(); /* a reply the result function cannot read: no word, as in the twin */
        Py_RETURN_NONE;
    }
    return word;
}

static PyObject *
count(PyObject *self, PyObject *a)
{
    PyObject *stack, *got, *entry_of, *general, *make, *found, *none, *emptiable, *args_of;
    if (!PyArg_UnpackTuple(a, "count", 9, 9, &stack, &got, &entry_of, &general, &make, &found, &none,
                           &emptiable, &args_of)) {
        return NULL;
    }
    if (!PyList_Check(stack) || !PyList_Check(got) || PyList_Size(stack) != PyList_Size(got)) {
        PyErr_SetString(PyExc_ValueError, "count: stack and got must be lists of one length");
        return NULL;
    }
    Py_ssize_t n = PyList_Size(stack);
    PyObject *groups = PyDict_New();
    PyObject *entry = NULL, *group = NULL, *last_name = NULL, *last_key = NULL, *last_word = NULL;
    PyObject *args = NULL, *name = NULL, *key = NULL, *word = NULL;
    if (groups == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *cmd = PyList_GetItem(stack, i);
        PyObject *reply = PyList_GetItem(got, i);
        if (cmd == NULL || reply == NULL) {
            goto fail;
        }
        Py_INCREF(reply);  /* the list may change under a callback */
        Py_CLEAR(args);
        if (PyTuple_CheckExact(cmd) && PyTuple_Size(cmd) > 0) {
            args = PyTuple_GetItem(cmd, 0);
            Py_XINCREF(args);
        } else {
            args = PyObject_CallFunctionObjArgs(args_of, cmd, NULL);
        }
        if (args == NULL) {
            Py_DECREF(reply);
            goto fail;
        }
        Py_ssize_t len = PyObject_Length(args);
        if (len < 0) {
            Py_DECREF(reply);
            goto fail;
        }
        if (len < 2) {
            set_ref(&entry, NULL);  /* the single-command path */
            set_ref(&last_name, NULL);
        } else {
            name = PySequence_GetItem(args, 0);
            key = name ? PySequence_GetItem(args, 1) : NULL;
            if (key == NULL) {
                Py_XDECREF(name);
                Py_DECREF(reply);
                goto fail;
            }
            if (last_name == NULL || name != last_name || key != last_key) {
                set_ref(&last_name, name);
                set_ref(&last_key, key);
                set_ref(&last_word, NULL);
                PyObject *learnt = PyObject_CallFunctionObjArgs(entry_of, name, key, NULL);
                set_ref(&entry, learnt);
                Py_XDECREF(learnt);
                if (learnt == NULL) {
                    Py_DECREF(name);
                    Py_DECREF(key);
                    Py_DECREF(reply);
                    goto fail;
                }
                if (!PyTuple_Check(entry) && !PyLong_Check(entry)) {
                    PyErr_SetString(PyExc_TypeError, "count: an entry is 0, 1 or a tuple");
                    Py_DECREF(name);
                    Py_DECREF(key);
                    Py_DECREF(reply);
                    goto fail;
                }
            }
            Py_DECREF(name);
            Py_DECREF(key);
            name = key = NULL;
        }
        long code = -1;  /* 0: skip; 1 (or no entry): the single-command path; -1: a cached command */
        if (entry == NULL) {
            code = 1;
        } else if (PyLong_Check(entry)) {
            code = PyLong_AsLong(entry);
        }
        if (code == 0) {
            Py_DECREF(reply);
            continue;
        }
        int failed = 0;
        if (code == -1) {
            failed = PyExceptionInstance_Check(reply);  /* isinstance(reply, BaseException) */
        }
        if (code != -1 || failed) {
            int bad = add_general(groups, general, args, reply);
            Py_DECREF(reply);
            if (bad < 0) {
                goto fail;
            }
            continue;
        }
        word = word_of(entry, args, reply, found, none, emptiable);
        Py_DECREF(reply);
        if (word == NULL) {
            goto fail;
        }
        if (last_word != NULL && word == last_word && group != NULL) {
            Py_CLEAR(word);
            if (bump(group) < 0) {
                goto fail;
            }
            continue;
        }
        set_ref(&last_word, word);
        PyObject *made = PyTuple_GetItem(entry, 2);
        if (made == NULL) {
            goto fail;
        }
        PyObject *item = PyDict_GetItemWithError(made, word);  /* borrowed */
        PyObject *owned = NULL;
        if (item == NULL) {
            if (PyErr_Occurred()) {
                goto fail;
            }
            item = owned = PyObject_CallFunctionObjArgs(make, entry, word, NULL);
            if (item == NULL) {
                goto fail;
            }
        } else {
            Py_INCREF(item);
            owned = item;
        }
        Py_CLEAR(word);
        PyObject *id = PyLong_FromVoidPtr(item);
        if (id == NULL) {
            Py_DECREF(owned);
            goto fail;
        }
        PyObject *found_group = PyDict_GetItemWithError(groups, id);  /* borrowed */
        if (found_group != NULL) {
            Py_DECREF(id);
            Py_DECREF(owned);
            set_ref(&group, found_group);
            if (bump(group) < 0) {
                goto fail;
            }
            continue;
        }
        if (PyErr_Occurred()) {
            Py_DECREF(id);
            Py_DECREF(owned);
            goto fail;
        }
        PyObject *one = PyLong_FromLong(1);
        PyObject *fresh = one ? PyList_New(2) : NULL;
        if (fresh == NULL) {
            Py_XDECREF(one);
            Py_DECREF(id);
            Py_DECREF(owned);
            goto fail;
        }
        PyList_SetItem(fresh, 0, owned);  /* steals */
        PyList_SetItem(fresh, 1, one);
        int bad = PyDict_SetItem(groups, id, fresh);
        Py_DECREF(id);
        set_ref(&group, fresh);
        Py_DECREF(fresh);
        if (bad < 0) {
            goto fail;
        }
    }
    Py_XDECREF(args);
    Py_XDECREF(entry);
    Py_XDECREF(group);
    Py_XDECREF(last_name);
    Py_XDECREF(last_key);
    Py_XDECREF(last_word);
    PyObject *out = PyDict_Values(groups);
    Py_DECREF(groups);
    return out;
fail:
    Py_XDECREF(args);
    Py_XDECREF(word);
    Py_XDECREF(entry);
    Py_XDECREF(group);
    Py_XDECREF(last_name);
    Py_XDECREF(last_key);
    Py_XDECREF(last_word);
    Py_DECREF(groups);
    return NULL;
}

static PyMethodDef methods[] = {
    {"count", count, METH_VARARGS, "[Item, count] per distinct Item of a pipeline's commands, in order."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_pipeline_native", "A redis-py pipeline's commands counted into Items.", -1, methods,
};

PyMODINIT_FUNC
PyInit__pipeline_native(void)
{
    FOUND_WORD = PyUnicode_InternFromString("found");
    NOT_FOUND_WORD = PyUnicode_InternFromString("not_found");
    if (FOUND_WORD == NULL || NOT_FOUND_WORD == NULL) {
        return NULL;
    }
    return PyModule_Create(&module);
}
