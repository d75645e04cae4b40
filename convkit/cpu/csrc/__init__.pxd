# Cython declarations of the C headers in this folder (cimported by the extension modules only,
# so code that cimports the public .pxd files needs no include path).
