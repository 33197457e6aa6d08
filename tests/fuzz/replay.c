/* replay — a main() for the fuzz targets without libFuzzer, so `make check` can run every
 * committed corpus file and reproducer through the same LLVMFuzzerTestOneInput with gcc (under
 * SAN=1 with ASan+UBSan), and CI needs no clang.
 *
 *   replay_<target> PATH...    each PATH a file, or a folder whose files (one level, sorted by
 *                              name, dot files skipped) are run in turn; a missing PATH is skipped
 *                              (a target may have no reproducers yet)
 *
 * A broken contract aborts (the target's FZ_CHECK) and a sanitizer report ends the process, so
 * the exit status says it all; the input being run is printed first on stderr when -v is given,
 * and always named when an input runs longer than REPLAY_ALARM_S (a hang is a finding too).
 */
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz.h"

#define REPLAY_ALARM_S 10

/* libFuzzer calls it when a target defines it; so do we. */
__attribute__((weak)) int LLVMFuzzerInitialize(int *argc, char ***argv);

static const char *current;

static void on_alarm(int sig)
{
    (void)sig;
    /* async-signal-safe output only */
    static const char msg[] = "replay: input runs longer than the limit (a hang): ";
    if (write(2, msg, sizeof msg - 1) < 0 || write(2, current, strlen(current)) < 0 ||
        write(2, "\n", 1) < 0)
        _exit(3);
    _exit(3);
}

static int run_file(const char *path, int verbose)
{
    kerr e;
    kerr_clear(&e);
    size_t len = 0;
    char *data = util_read_file(path, &len, &e);
    if (!data) {
        fprintf(stderr, "replay: %s\n", kerr_msg(&e));
        return -1;
    }
    current = path;
    if (verbose)
        fprintf(stderr, "replay: %s (%zu bytes)\n", path, len);
    /* An exact-size copy, so ASan catches a read past the input's end as libFuzzer would. */
    uint8_t *copy = xmalloc(len ? len : 1);
    memcpy(copy, data, len);
    free(data);
    alarm(REPLAY_ALARM_S);
    LLVMFuzzerTestOneInput(copy, len);
    alarm(0);
    free(copy);
    return 0;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(int argc, char **argv)
{
    int verbose = argc > 1 && strcmp(argv[1], "-v") == 0;
    if (LLVMFuzzerInitialize)
        LLVMFuzzerInitialize(&argc, &argv);
    signal(SIGALRM, on_alarm);
    int nrun = 0;
    for (int a = 1 + verbose; a < argc; a++) {
        struct stat st;
        if (stat(argv[a], &st) != 0)
            continue;
        if (!S_ISDIR(st.st_mode)) {
            if (run_file(argv[a], verbose))
                return 1;
            nrun++;
            continue;
        }
        DIR *d = opendir(argv[a]);
        if (!d) {
            perror(argv[a]);
            return 1;
        }
        int n = 0, cap = 64;
        char **names = xmalloc(cap * sizeof *names);
        for (struct dirent *de; (de = readdir(d));) {
            if (de->d_name[0] == '.')
                continue;
            if (n == cap)
                names = xrealloc(names, (cap *= 2) * sizeof *names);
            names[n++] = util_path_join(argv[a], de->d_name);
        }
        closedir(d);
        qsort(names, n, sizeof *names, by_name);
        for (int i = 0; i < n; i++) {
            if (util_is_file(names[i])) {
                if (run_file(names[i], verbose))
                    return 1;
                nrun++;
            }
            free(names[i]);
        }
        free(names);
    }
    printf("replayed %d inputs\n", nrun);
    return 0;
}
