/* fuzz — helpers shared by the libFuzzer targets in tests/fuzz/ (see README.md there).
 *
 * Every target is one file defining LLVMFuzzerTestOneInput (and, where it needs fixed state
 * such as a loaded tokenizer, LLVMFuzzerInitialize). The same file is linked two ways:
 *   - with clang -fsanitize=fuzzer,address,undefined into out/fuzz/clang/fuzz_<target> (make fuzz);
 *   - with gcc and tests/fuzz/replay.c's main into $(B)/tests/fuzz/replay_<target>, which make
 *     check runs over the committed corpus and reproducers (under SAN=1 with ASan+UBSan).
 *
 * Helpers here:
 *   fz_path(name)        a path in this process's scratch folder (made on first use, under
 *                        /dev/shm when it exists so writing the input costs no disk I/O)
 *   fz_write(name, d, n) writes the input there and returns the path
 *   fz_text(d, n)        the input as a NUL-terminated heap string (free it)
 *   FZ_CHECK(cond, ...)  a broken contract: prints the message and abort()s, which libFuzzer
 *                        reports as a crash with the input that caused it
 *   fz_check_err(e)      a failing call must leave a non-empty error message (printed when
 *                        KILN_FUZZ_VERBOSE is set)
 * Fixtures are found through KILN_SOURCE_DIR (the repository root the binary was built from).
 */
#ifndef KILN_FUZZ_H
#define KILN_FUZZ_H

#include <dirent.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define FZ_FIXTURE(rel) KILN_SOURCE_DIR "/" rel

#define FZ_CHECK(cond, ...)                                                                   \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            fprintf(stderr, "%s:%d: fuzz contract broken: %s\n  ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                                     \
            fputc('\n', stderr);                                                              \
            abort();                                                                          \
        }                                                                                     \
    } while (0)

/* The house rule: a call that fails says why. With KILN_FUZZ_VERBOSE set in the environment
 * the message is printed, to see how far an input gets. */
#define fz_check_err(e)                                                                       \
    do {                                                                                      \
        FZ_CHECK(kerr_msg(e)[0] != '\0', "failed with an empty error message");               \
        if (getenv("KILN_FUZZ_VERBOSE"))                                                      \
            fprintf(stderr, "  error: %s\n", kerr_msg(e));                                     \
    } while (0)

static char fz_dir[64];

static inline void fz_cleanup(void)
{
    if (!fz_dir[0])
        return;
    DIR *d = opendir(fz_dir);
    for (struct dirent *de; d && (de = readdir(d));) {
        char p[600];
        snprintf(p, sizeof p, "%s/%s", fz_dir, de->d_name);
        if (de->d_name[0] != '.')
            unlink(p);
    }
    if (d)
        closedir(d);
    rmdir(fz_dir);
}

static inline const char *fz_path(const char *name)
{
    static char p[128];
    if (!fz_dir[0]) {
        snprintf(fz_dir, sizeof fz_dir, "%s/kiln-fuzz-XXXXXX",
                 access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
        if (!mkdtemp(fz_dir)) {
            perror("fuzz: mkdtemp");
            abort();
        }
        atexit(fz_cleanup);
    }
    snprintf(p, sizeof p, "%s/%s", fz_dir, name);
    return p;
}

static inline const char *fz_write(const char *name, const uint8_t *data, size_t size)
{
    const char *p = fz_path(name);
    FILE *f = fopen(p, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f)) {
        perror(p);
        abort();
    }
    return p;
}

static inline char *fz_text(const uint8_t *data, size_t size)
{
    char *s = xmalloc(size + 1);
    if (size)
        memcpy(s, data, size);
    s[size] = 0;
    return s;
}

/* Structural UTF-8 check (no overlongs, no surrogates, nothing above U+10FFFF). */
static inline int fz_utf8_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        unsigned c = p[i];
        size_t k;
        unsigned cp, min;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xc2 && c <= 0xdf) {
            k = 1, cp = c & 0x1f, min = 0x80;
        } else if (c >= 0xe0 && c <= 0xef) {
            k = 2, cp = c & 0x0f, min = 0x800;
        } else if (c >= 0xf0 && c <= 0xf4) {
            k = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return 0;
        }
        if (n - i <= k)
            return 0;
        for (size_t j = 1; j <= k; j++) {
            if ((p[i + j] & 0xc0) != 0x80)
                return 0;
            cp = cp << 6 | (p[i + j] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += k + 1;
    }
    return 1;
}

#endif
