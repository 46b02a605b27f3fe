#include "check.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

void err_set(Err *e, const char *fmt, ...) {
    if (!e) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
}

void plab_die(const char *file, int line, const char *fmt, ...) {
    fflush(stdout);
    fprintf(stderr, "plab: fatal error at %s:%d: ", file, line);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(EXIT_FAILURE);
}

void *malloc_check(size_t n, const char *file, int line) {
    void *p = malloc(n ? n : 1);
    if (!p) plab_die(file, line, "malloc of %zu bytes failed", n);
    return p;
}

void *calloc_check(size_t n, size_t size, const char *file, int line) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) plab_die(file, line, "calloc of %zu x %zu bytes failed", n, size);
    return p;
}

void *realloc_check(void *p, size_t n, const char *file, int line) {
    void *q = realloc(p, n ? n : 1);
    if (!q) plab_die(file, line, "realloc to %zu bytes failed", n);
    return q;
}

char *strdup_check(const char *s, const char *file, int line) {
    char *p = strdup(s);
    if (!p) plab_die(file, line, "strdup failed");
    return p;
}

FILE *fopen_check(const char *path, const char *mode, const char *file, int line) {
    FILE *f = fopen(path, mode);
    if (!f) plab_die(file, line, "cannot open '%s' (mode %s): %s", path, mode, strerror(errno));
    return f;
}

void fclose_check(FILE *f, const char *file, int line) {
    if (fclose(f) != 0) plab_die(file, line, "fclose failed: %s", strerror(errno));
}

void fwrite_check(const void *p, size_t size, size_t n, FILE *f, const char *file, int line) {
    if (fwrite(p, size, n, f) != n) plab_die(file, line, "fwrite failed: %s", strerror(errno));
}

void fread_check(void *p, size_t size, size_t n, FILE *f, const char *file, int line) {
    if (fread(p, size, n, f) != n)
        plab_die(file, line, "fread failed (%s)", feof(f) ? "unexpected end of file" : strerror(errno));
}
