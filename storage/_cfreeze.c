/* hoard.storage._cfreeze: the freezing of plain JSON values, in C.
 *
 * The same walks as the Python functions of storage/_values.py (`_plain_dict`, `_plain_list`,
 * `_plain_mapping`'s loop) and storage/_codec.py (`freeze_decoded`, `_owned_dict`'s loop), which
 * stay the reference and the fallback when this module was not built (see `hoard.storage._values`).
 * Each accepts exactly what its Python twin accepts and returns equal values of the same types
 * (tests/storage/test_cfreeze.py compares them on generated values); whatever it does not accept
 * it refuses the same way (the "not plain" exception, after which the caller runs the full checks,
 * or CorruptStateError for a decoded value nested too deep).
 *
 * Concurrency: every function runs under the GIL and never releases it, nor runs Python code (no
 * user hash or comparison: keys are exact str, values are only type-checked), so a value is read
 * in one piece. Frozen copies are filled with the C API (PyDict_SetItem, PyList_SetSlice), which
 * does not dispatch to FrozenDict's and FrozenList's refusing methods.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>

static PyTypeObject *FrozenDict = NULL;
static PyTypeObject *FrozenList = NULL;
static PyObject *NotPlain = NULL;
static PyObject *Corrupt = NULL;
static long MaxDepth = 0;
static PyObject *EmptyTuple = NULL;

/* -- frozen copies ------------------------------------------------------------------------------ */

static PyObject *
frozen_dict_copy(PyObject *d)
{
    PyObject *out = PyDict_Type.tp_new(FrozenDict, EmptyTuple, NULL);
    if (out == NULL)
        return NULL;
    if (PyDict_Update(out, d) < 0) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

static PyObject *
frozen_list_copy(PyObject *seq)
{
    PyObject *out = PyList_Type.tp_new(FrozenList, EmptyTuple, NULL);
    if (out == NULL)
        return NULL;
    if (PyList_SetSlice(out, 0, 0, seq) < 0) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

/* -- plain values (an update's values, once orjson encoded them) ------------------------------- */

enum kind { LEAF, DICT, LIST, REFUSED };

/* What a value inside a plain value is: a leaf kept as it is (str, int, bool, None, a finite float,
 * a FrozenDict or FrozenList), a container to copy, or refused. */
static enum kind
plain_kind(PyObject *v)
{
    PyTypeObject *t = Py_TYPE(v);
    if (t == &PyUnicode_Type || t == &PyLong_Type || t == &PyBool_Type || v == Py_None)
        return LEAF;
    if (t == &PyDict_Type)
        return DICT;
    if (t == &PyList_Type || t == &PyTuple_Type)
        return LIST;
    if (t == &PyFloat_Type)
        return isfinite(PyFloat_AS_DOUBLE(v)) ? LEAF : REFUSED;
    if (t == FrozenDict || t == FrozenList)
        return LEAF;
    return REFUSED;
}

static PyObject *plain_list(PyObject *value, long depth);

static PyObject *
refuse(void)
{
    PyErr_SetNone(NotPlain);
    return NULL;
}

/* The frozen copy of a container met inside a plain value, or NULL (an error set). */
static PyObject *
plain_any(PyObject *v, enum kind k, long depth);

/* The containers among the values of `out` (a copy of a plain dict) replaced by frozen copies,
 * each `depth` deep; returns `out`, or NULL (an error set, `out` released). */
static PyObject *
plain_fill(PyObject *out, long depth)
{
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(out, &pos, &k, &v)) {
        enum kind kind = plain_kind(v);
        if (kind == LEAF)
            continue;
        PyObject *f = plain_any(v, kind, depth);
        /* an existing key gets a new value: the dict's keys, size and order stay as they are */
        if (f == NULL || PyDict_SetItem(out, k, f) < 0) {
            Py_XDECREF(f);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(f);
    }
    return out;
}

static PyObject *
plain_dict(PyObject *value, long depth)
{
    if (depth >= MaxDepth)
        return refuse();
    PyObject *out = frozen_dict_copy(value);
    return out == NULL ? NULL : plain_fill(out, depth + 1);
}

static PyObject *
plain_list(PyObject *value, long depth)
{
    if (depth >= MaxDepth)
        return refuse();
    PyObject *out = frozen_list_copy(value);
    if (out == NULL)
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(out);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyList_GET_ITEM(out, i);
        enum kind kind = plain_kind(v);
        if (kind == LEAF)
            continue;
        PyObject *f = plain_any(v, kind, depth + 1);
        if (f == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, f);  /* steals f; the element it replaces is released */
        Py_DECREF(v);
    }
    return out;
}

static PyObject *
plain_any(PyObject *v, enum kind k, long depth)
{
    if (k == DICT)
        return plain_dict(v, depth);
    if (k == LIST)
        return plain_list(v, depth);
    return refuse();
}

/* The depth of a call `name(value, depth)`: 0 or more, or -1 with an error set. */
static long
depth_of(PyObject *const *args, Py_ssize_t nargs, const char *name)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "%s(value, depth)", name);
        return -1;
    }
    long depth = PyLong_AsLong(args[1]);
    if (depth < 0 && !PyErr_Occurred())
        PyErr_Format(PyExc_ValueError, "%s: depth must be >= 0", name);
    return depth < 0 ? -1 : depth;
}

/* plain(value, depth): `_plain_dict` / `_plain_list` of a dict, list or tuple. */
static PyObject *
cf_plain(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    long depth = depth_of(args, nargs, "plain");
    return depth < 0 ? NULL : plain_any(args[0], plain_kind(args[0]), depth);
}

/* plain_top(mapping): `_plain_mapping`'s loop. A plain dict copy of `mapping` (a dict) whose
 * containers are frozen copies, each at depth 0. */
static PyObject *
cf_plain_top(PyObject *self, PyObject *mapping)
{
    if (!PyDict_CheckExact(mapping)) {
        PyErr_SetString(PyExc_TypeError, "plain_top takes a dict");
        return NULL;
    }
    PyObject *out = PyDict_Copy(mapping);
    return out == NULL ? NULL : plain_fill(out, 0);
}

/* -- decoded values (fresh out of orjson.loads: JSON-typed, nobody else holds them) ------------ */

static PyObject *decoded_list(PyObject *value, long depth);
static PyObject *decoded_dict(PyObject *value, long depth);

static PyObject *
too_deep(void)
{
    PyErr_Format(Corrupt, "a stored value is nested deeper than %ld levels", MaxDepth);
    return NULL;
}

/* The frozen copy of `v` when it is a container (1, `*out` a new reference), 0 when it is not, -1
 * with an error set. */
static int
decoded_child(PyObject *v, long depth, PyObject **out)
{
    if (PyDict_CheckExact(v))
        *out = decoded_dict(v, depth);
    else if (PyList_CheckExact(v))
        *out = decoded_list(v, depth);
    else
        return 0;
    return *out == NULL ? -1 : 1;
}

/* The containers of `value` (a dict) replaced in place by frozen ones; 0, or -1 with an error set. */
static int
decoded_dict_fill(PyObject *value, long depth)
{
    Py_ssize_t pos = 0;
    PyObject *k, *v, *f;
    while (PyDict_Next(value, &pos, &k, &v)) {
        int got = decoded_child(v, depth + 1, &f);
        if (got == 0)
            continue;
        if (got < 0 || PyDict_SetItem(value, k, f) < 0) {  /* an existing key: the keys stay */
            if (got > 0)
                Py_DECREF(f);
            return -1;
        }
        Py_DECREF(f);
    }
    return 0;
}

static PyObject *
decoded_dict(PyObject *value, long depth)
{
    if (depth >= MaxDepth)
        return too_deep();
    if (decoded_dict_fill(value, depth) < 0)
        return NULL;
    return frozen_dict_copy(value);
}

static PyObject *
decoded_list(PyObject *value, long depth)
{
    if (depth >= MaxDepth)
        return too_deep();
    Py_ssize_t n = PyList_GET_SIZE(value);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyList_GET_ITEM(value, i), *f;
        int got = decoded_child(v, depth + 1, &f);
        if (got == 0)
            continue;
        if (got < 0)
            return NULL;
        PyList_SET_ITEM(value, i, f);  /* steals f */
        Py_DECREF(v);
    }
    return frozen_list_copy(value);
}

/* decoded(value, depth): `freeze_decoded`. */
static PyObject *
cf_decoded(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    long depth = depth_of(args, nargs, "decoded");
    if (depth < 0)
        return NULL;
    PyObject *value = args[0];
    if (PyDict_CheckExact(value))
        return decoded_dict(value, depth);
    if (PyList_CheckExact(value))
        return decoded_list(value, depth);
    return Py_NewRef(value);
}

/* owned(value): `_owned_dict`'s loop. Each container value of `value` (a dict) replaced in place by
 * its frozen copy (at depth 0); returns `value`. */
static PyObject *
cf_owned(PyObject *self, PyObject *value)
{
    if (!PyDict_CheckExact(value)) {
        PyErr_SetString(PyExc_TypeError, "owned takes a dict");
        return NULL;
    }
    if (decoded_dict_fill(value, -1) < 0)
        return NULL;
    return Py_NewRef(value);
}

/* configure(FrozenDict, FrozenList, NotPlain, CorruptStateError, MAX_DEPTH) */
static PyObject *
cf_configure(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5 || !PyType_Check(args[0]) || !PyType_Check(args[1])
        || !PyType_IsSubtype((PyTypeObject *)args[0], &PyDict_Type)
        || !PyType_IsSubtype((PyTypeObject *)args[1], &PyList_Type)
        || !PyExceptionClass_Check(args[2]) || !PyExceptionClass_Check(args[3]) || !PyLong_Check(args[4])) {
        PyErr_SetString(PyExc_TypeError,
                        "configure(dict subclass, list subclass, exception, exception, max depth)");
        return NULL;
    }
    long max_depth = PyLong_AsLong(args[4]);
    if (max_depth == -1 && PyErr_Occurred())
        return NULL;
    Py_XSETREF(FrozenDict, (PyTypeObject *)Py_NewRef(args[0]));
    Py_XSETREF(FrozenList, (PyTypeObject *)Py_NewRef(args[1]));
    Py_XSETREF(NotPlain, Py_NewRef(args[2]));
    Py_XSETREF(Corrupt, Py_NewRef(args[3]));
    MaxDepth = max_depth;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"configure", (PyCFunction)(void (*)(void))cf_configure, METH_FASTCALL,
     "configure(FrozenDict, FrozenList, NotPlain, CorruptStateError, MAX_DEPTH): once, before any call."},
    {"plain", (PyCFunction)(void (*)(void))cf_plain, METH_FASTCALL,
     "plain(value, depth): the frozen copy of a plain dict, list or tuple (_plain_dict / _plain_list)."},
    {"plain_top", cf_plain_top, METH_O,
     "plain_top(mapping): a dict copy of mapping with frozen copies of its containers."},
    {"decoded", (PyCFunction)(void (*)(void))cf_decoded, METH_FASTCALL,
     "decoded(value, depth): freeze_decoded (containers consumed, frozen copies returned)."},
    {"owned", cf_owned, METH_O,
     "owned(value): each container value of a decoded dict replaced by its frozen copy, in place."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_cfreeze",
    "The freezing of plain JSON values in C (see storage/_cfreeze.c).", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__cfreeze(void)
{
    EmptyTuple = PyTuple_New(0);
    if (EmptyTuple == NULL)
        return NULL;
    return PyModule_Create(&module);
}
