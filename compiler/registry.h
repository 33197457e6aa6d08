/* registry — which archspec serves which Hugging Face architecture.
 *
 * Spec folders are searched in this order, earlier ones shadowing later ones for the same
 * architecture name: --spec-path DIR (each, in order), KILN_SPEC_PATH (colon separated), then
 * the built-in archspecs/ folder (found next to the kilnc binary: ../../archspecs, or the
 * source tree it was built from). --spec FILE bypasses resolution entirely.
 *
 * A spec file that fails to load is remembered with its error: `kilnc archs` shows it, and an
 * unresolved architecture mentions it, since it may be the one that would have matched.
 */
#ifndef KILN_REGISTRY_H
#define KILN_REGISTRY_H

#include "config.h"
#include "spec.h"
#include "util.h"

typedef struct registry {
    char *lib_dir;      /* the built-in archspecs folder (holds kiln.lua) */
    int n;
    spec_info *specs;   /* loaded, in search order */
    int nbroken;
    char **broken;      /* "file: error" of specs that failed to load */
} registry;

/* The built-in archspecs folder, or NULL with an error. */
char *registry_builtin_dir(kerr *err);

/* user_dirs: --spec-path folders in order (may be NULL/0). */
registry *registry_load(char *const *user_dirs, int n_user, kerr *err);
void registry_free(registry *r);

/* The spec serving `arch`, or NULL. */
const spec_info *registry_find(const registry *r, const char *arch);

/* Resolves config.json's architectures[0]: on failure the error lists the known architectures
 * and points to archspecs/README.md. */
const spec_info *registry_resolve(const registry *r, const config *cfg, kerr *err);

#endif
