/* registry — see registry.h. */
#include "registry.h"

#include <dirent.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef KILN_SOURCE_DIR
#define KILN_SOURCE_DIR "."
#endif

static int has_kiln_lua(const char *dir)
{
    char *p = util_path_join(dir, "kiln.lua");
    int ok = util_is_file(p);
    free(p);
    return ok;
}

char *registry_builtin_dir(kerr *err)
{
    const char *env = getenv("KILN_ARCHSPECS");
    if (env && *env) {
        if (has_kiln_lua(env))
            return xstrdup(env);
        kerr_add(err, "KILN_ARCHSPECS=%s: no kiln.lua in that folder", env);
        return NULL;
    }
    /* Walk up from the binary: out/bin/kilnc, out/san/bin/kilnc, out/tests/test_x ... */
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = 0;
        for (int up = 0; up < 4; up++) {
            char *slash = strrchr(exe, '/');
            if (!slash)
                break;
            *slash = 0;
            char *cand = util_path_join(exe, "archspecs");
            if (has_kiln_lua(cand)) {
                char *r = realpath(cand, NULL);
                free(cand);
                return r ? r : xstrdup(exe);
            }
            free(cand);
        }
    }
    char *src = util_path_join(KILN_SOURCE_DIR, "archspecs");
    if (has_kiln_lua(src))
        return src;
    free(src);
    kerr_add(err, "cannot find the built-in archspecs folder (archspecs/kiln.lua) near the kilnc "
                  "binary; set KILN_ARCHSPECS=/path/to/kiln/archspecs");
    return NULL;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Loads every *.lua in dir except kiln.lua, in name order. */
static void load_dir(registry *r, const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) {
        r->broken = xrealloc(r->broken, sizeof(char *) * (size_t)(r->nbroken + 1));
        r->broken[r->nbroken++] = xasprintf("%s: cannot open spec folder", dir);
        return;
    }
    char **names = NULL;
    int nn = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (l > 4 && strcmp(e->d_name + l - 4, ".lua") == 0 && strcmp(e->d_name, "kiln.lua") != 0) {
            names = xrealloc(names, sizeof(char *) * (size_t)(nn + 1));
            names[nn++] = xstrdup(e->d_name);
        }
    }
    closedir(d);
    qsort(names, (size_t)nn, sizeof(char *), cmp_str);
    for (int i = 0; i < nn; i++) {
        char *p = util_path_join(dir, names[i]);
        spec_info s;
        kerr e2;
        kerr_clear(&e2);
        if (spec_probe(p, r->lib_dir, &s, &e2) == 0) {
            r->specs = xrealloc(r->specs, sizeof(spec_info) * (size_t)(r->n + 1));
            r->specs[r->n++] = s;
        } else {
            r->broken = xrealloc(r->broken, sizeof(char *) * (size_t)(r->nbroken + 1));
            r->broken[r->nbroken++] = xstrdup(kerr_msg(&e2));
        }
        free(p);
        free(names[i]);
    }
    free(names);
}

registry *registry_load(char *const *user_dirs, int n_user, kerr *err)
{
    char *lib = registry_builtin_dir(err);
    if (!lib)
        return NULL;
    registry *r = xcalloc(1, sizeof *r);
    r->lib_dir = lib;
    for (int i = 0; i < n_user; i++)
        load_dir(r, user_dirs[i]);
    const char *env = getenv("KILN_SPEC_PATH");
    if (env && *env) {
        char *copy = xstrdup(env), *save = NULL;
        for (char *tok = strtok_r(copy, ":", &save); tok; tok = strtok_r(NULL, ":", &save))
            if (*tok)
                load_dir(r, tok);
        free(copy);
    }
    load_dir(r, lib);
    return r;
}

void registry_free(registry *r)
{
    if (!r)
        return;
    for (int i = 0; i < r->n; i++)
        spec_info_free(&r->specs[i]);
    free(r->specs);
    for (int i = 0; i < r->nbroken; i++)
        free(r->broken[i]);
    free(r->broken);
    free(r->lib_dir);
    free(r);
}

const spec_info *registry_find(const registry *r, const char *arch)
{
    for (int i = 0; i < r->n; i++)
        for (int k = 0; k < r->specs[i].n_archs; k++)
            if (strcmp(r->specs[i].archs[k], arch) == 0)
                return &r->specs[i];
    return NULL;
}

const spec_info *registry_resolve(const registry *r, const config *cfg, kerr *err)
{
    const char *arch;
    if (config_architecture(cfg, &arch, err))
        return NULL;
    const spec_info *s = registry_find(r, arch);
    if (s)
        return s;
    /* The message lists what is known, so the user sees at once whether it is a typo, a
     * missing spec folder, or a new architecture to write a spec for. */
    size_t cap = 4096, len = 0;
    char *known = xmalloc(cap);
    known[0] = 0;
    for (int i = 0; i < r->n; i++)
        for (int k = 0; k < r->specs[i].n_archs; k++) {
            const char *a = r->specs[i].archs[k];
            if (registry_find(r, a) != &r->specs[i])
                continue; /* shadowed: listed once, for the spec that serves it */
            if (len + strlen(a) + 4 >= cap)
                known = xrealloc(known, cap *= 2);
            len += (size_t)sprintf(known + len, "%s%s", len ? ", " : "", a);
        }
    kerr_add(err,
             "%s: architecture '%s' has no archspec.\n"
             "known architectures: %s\n"
             "to add it: write a spec (a short Lua file; see %s/README.md), then pass\n"
             "--spec FILE, or put it in a folder given by --spec-path DIR or KILN_SPEC_PATH",
             cfg->path, arch, len ? known : "(none)", r->lib_dir);
    for (int i = 0; i < r->nbroken; i++)
        kerr_add(err, "  note: this spec failed to load and may be the one you meant:\n  %s",
                 r->broken[i]);
    free(known);
    return NULL;
}
