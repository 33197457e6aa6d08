/* knvrtc — see knvrtc.h. */
#include "knvrtc.h"

#include <dirent.h>
#include <errno.h>
#include <nvrtc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *nvrtc_version_str(void)
{
    static char buf[32];
    int maj = 0, min = 0;
    nvrtcVersion(&maj, &min);
    snprintf(buf, sizeof buf, "%d.%d", maj, min);
    return buf;
}

const char *nvrtc_cuda_include(void)
{
    static char buf[1024];
    const char *home = getenv("CUDA_HOME");
    snprintf(buf, sizeof buf, "%s/include", home && *home ? home : "/usr/local/cuda");
    return buf;
}

static char *cache_dir(void)
{
    const char *k = getenv("KILN_CACHE");
    if (k && strcmp(k, "off") == 0)
        return NULL;
    if (k && *k)
        return xstrdup(k);
    const char *x = getenv("XDG_CACHE_HOME");
    if (x && *x)
        return xasprintf("%s/kiln", x);
    const char *h = getenv("HOME");
    return h && *h ? xasprintf("%s/.cache/kiln", h) : NULL;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The headers a unit can include live in the include folders; their contents are part of the
 * cache key, so editing a template recompiles what uses it. */
static uint64_t hash_dir(const char *dir, uint64_t h)
{
    DIR *d = opendir(dir);
    if (!d)
        return h;
    char **names = NULL;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') {
            names = xrealloc(names, sizeof(char *) * (size_t)(n + 1));
            names[n++] = xstrdup(e->d_name);
        }
    closedir(d);
    qsort(names, (size_t)n, sizeof(char *), cmp_names);
    for (int i = 0; i < n; i++) {
        char *p = util_path_join(dir, names[i]);
        size_t len;
        kerr quiet;
        kerr_clear(&quiet);
        char *data = util_is_file(p) ? util_read_file(p, &len, &quiet) : NULL;
        if (data) {
            h = util_fnv1a(names[i], strlen(names[i]) + 1, h);
            h = util_fnv1a(data, len, h);
        }
        free(data);
        free(p);
        free(names[i]);
    }
    free(names);
    return h;
}

void nvrtc_result_free(nvrtc_result *r)
{
    free(r->code);
    memset(r, 0, sizeof *r);
}

#define NV(call)                                                                                \
    do {                                                                                        \
        nvrtcResult nv_rc_ = (call);                                                            \
        if (nv_rc_ != NVRTC_SUCCESS) {                                                          \
            kerr_add(err, "%s:%d: %s failed: %s", __FILE__, __LINE__, #call,                    \
                     nvrtcGetErrorString(nv_rc_));                                              \
            goto fail;                                                                          \
        }                                                                                       \
    } while (0)

int nvrtc_compile(const char *src, const char *name, const char *target,
                  const char *const *include_dirs, nvrtc_result *out, kerr *err)
{
    memset(out, 0, sizeof *out);
    int ptx = strncmp(target, "compute_", 8) == 0;
    /* options */
    const char *opts[64];
    char *owned[64];
    int no = 0, nown = 0;
    owned[nown++] = xasprintf("--gpu-architecture=%s", target);
    opts[no++] = owned[nown - 1];
    opts[no++] = "--std=c++17";
    opts[no++] = "-default-device";
    opts[no++] = "--use_fast_math";
    opts[no++] = "-lineinfo";
    /* headers only from the include dirs: without this NVRTC also searches the directory of the
     * unit's name, a bare "model.cu", so the working directory's own attention.cuh or common.cuh
     * would be compiled in place of kiln's (and the cache, keyed by the include dirs, would not
     * know) */
    opts[no++] = "--no-source-include";
    for (int i = 0; include_dirs && include_dirs[i] && no < 60; i++) {
        owned[nown++] = xasprintf("-I%s", include_dirs[i]);
        opts[no++] = owned[nown - 1];
    }
    owned[nown++] = xasprintf("-I%s", nvrtc_cuda_include());
    opts[no++] = owned[nown - 1];

    /* cache key: the source, every option, and the compiler version */
    uint64_t h = util_fnv1a(src, strlen(src), UTIL_FNV_SEED);
    for (int i = 0; i < no; i++)
        h = util_fnv1a(opts[i], strlen(opts[i]) + 1, h);
    const char *ver = nvrtc_version_str();
    h = util_fnv1a(ver, strlen(ver), h);
    for (int i = 0; include_dirs && include_dirs[i]; i++)
        h = hash_dir(include_dirs[i], h);
    char *dir = cache_dir(), *path = NULL;
    if (dir) {
        path = xasprintf("%s/nvrtc-%016llx.%s", dir, (unsigned long long)h, ptx ? "ptx" : "cubin");
        size_t len;
        kerr quiet;
        kerr_clear(&quiet);
        char *data = util_is_file(path) ? util_read_file(path, &len, &quiet) : NULL;
        if (data && len > 0) {
            out->code = (unsigned char *)data;
            out->len = ptx ? len + 1 : len;
            out->cached = 1;
            goto done;
        }
        free(data);
    }

    nvrtcProgram prog = NULL;
    double t0 = util_now();
    NV(nvrtcCreateProgram(&prog, src, name, 0, NULL, NULL));
    nvrtcResult rc = nvrtcCompileProgram(prog, no, opts);
    if (rc != NVRTC_SUCCESS) {
        size_t ln = 0;
        nvrtcGetProgramLogSize(prog, &ln);
        char *log = xmalloc(ln + 1);
        log[0] = 0;
        nvrtcGetProgramLog(prog, log);
        /* The first lines say what is wrong; a unit of many kernels repeats one error for
         * each (every mma.sync for a target without it): keep LOG_LINES, so that the message
         * stays readable and the hints added after it are not cut. */
        enum { LOG_LINES = 40 };
        char *end = log;
        for (int i = 0; i < LOG_LINES && end; i++)
            if ((end = strchr(end, '\n')) != NULL)
                end++;
        int more = 0;
        for (const char *p = end; p && *p; p++)
            more += *p == '\n';
        if (end && *end)
            *end = 0;
        char tail[80] = "";
        if (more)
            snprintf(tail, sizeof tail, "... (%d more lines of the log)\n", more);
        kerr_add(err, "NVRTC could not compile %s for %s (%s):\n%s%s", name, target,
                 nvrtcGetErrorString(rc), log, tail);
        free(log);
        goto fail;
    }
    if (ptx) {
        NV(nvrtcGetPTXSize(prog, &out->len));
        out->code = xmalloc(out->len);
        NV(nvrtcGetPTX(prog, (char *)out->code));
    } else {
        NV(nvrtcGetCUBINSize(prog, &out->len));
        out->code = xmalloc(out->len);
        NV(nvrtcGetCUBIN(prog, (char *)out->code));
    }
    nvrtcDestroyProgram(&prog);
    out->seconds = util_now() - t0;
    if (path) {
        kerr quiet;
        kerr_clear(&quiet);
        /* a cache that cannot be written is not an error: the next run compiles again */
        if (util_mkdirs(dir, &quiet) == 0) {
            char *tmp = xasprintf("%s.%d.tmp", path, (int)getpid());
            if (util_write_file(tmp, out->code, ptx ? out->len - 1 : out->len, &quiet) == 0)
                rename(tmp, path);
            else
                unlink(tmp);
            free(tmp);
        }
    }
done:
    for (int i = 0; i < nown; i++)
        free(owned[i]);
    free(dir);
    free(path);
    return 0;
fail:
    if (prog)
        nvrtcDestroyProgram(&prog);
    nvrtc_result_free(out);
    for (int i = 0; i < nown; i++)
        free(owned[i]);
    free(dir);
    free(path);
    return -1;
}
