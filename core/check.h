/* Error checks that report file and line.
 *
 * Every libc allocation or file call goes through one of these wrappers; a
 * failure is a bug or an environment problem, so it prints where it happened
 * and exits. User mistakes (bad keys, bad YAML) are not fatal: they travel
 * back as an Err so the caller can explain them and keep its state intact. */
#ifndef PLAB_CHECK_H
#define PLAB_CHECK_H

#include <stddef.h>
#include <stdio.h>

/* A recoverable error message for the user (config, YAML, task settings). */
typedef struct {
    char msg[1024];
} Err;

void err_set(Err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

_Noreturn void plab_die(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define DIE(...) plab_die(__FILE__, __LINE__, __VA_ARGS__)
#define CHECK(cond, ...)                                                                \
    do {                                                                                \
        if (!(cond)) plab_die(__FILE__, __LINE__, __VA_ARGS__);                         \
    } while (0)

void *malloc_check(size_t n, const char *file, int line);
void *calloc_check(size_t n, size_t size, const char *file, int line);
void *realloc_check(void *p, size_t n, const char *file, int line);
char *strdup_check(const char *s, const char *file, int line);
FILE *fopen_check(const char *path, const char *mode, const char *file, int line);
void fclose_check(FILE *f, const char *file, int line);
void fwrite_check(const void *p, size_t size, size_t n, FILE *f, const char *file, int line);
void fread_check(void *p, size_t size, size_t n, FILE *f, const char *file, int line);

#define xmalloc(n) malloc_check((n), __FILE__, __LINE__)
#define xcalloc(n, s) calloc_check((n), (s), __FILE__, __LINE__)
#define xrealloc(p, n) realloc_check((p), (n), __FILE__, __LINE__)
#define xstrdup(s) strdup_check((s), __FILE__, __LINE__)
#define xfopen(p, m) fopen_check((p), (m), __FILE__, __LINE__)
#define xfclose(f) fclose_check((f), __FILE__, __LINE__)
#define xfwrite(p, s, n, f) fwrite_check((p), (s), (n), (f), __FILE__, __LINE__)
#define xfread(p, s, n, f) fread_check((p), (s), (n), (f), __FILE__, __LINE__)

#endif
