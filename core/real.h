/* The scalar type of the CPU reference. The normal build is float; the
 * gradient-check build defines PLAB_DOUBLE and runs the very same code in
 * double precision so that finite differences are meaningful. */
#ifndef PLAB_REAL_H
#define PLAB_REAL_H
#ifdef PLAB_DOUBLE
typedef double real;
#define REAL_NAME "double"
#else
typedef float real;
#define REAL_NAME "float"
#endif
#endif
