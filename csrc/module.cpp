// Python module entry for xaikernels._C.  Operators register themselves through
// TORCH_LIBRARY_FRAGMENT / TORCH_LIBRARY_IMPL static initialisers when this shared object is
// loaded; no pybind11 bindings are needed.
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "xaikernels compiled ops", -1,
                                          nullptr};
  return PyModule_Create(&module_def);
}
}
