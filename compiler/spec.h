/* spec — runs archspecs: Lua 5.4 files that describe a model family.
 *
 * An archspec returns kiln.archspec{ name=, architectures={...}, task=, build=function(g, cfg) }.
 * spec_probe evaluates the file and reads its declarations (for the registry); spec_build calls
 * build(g, cfg) with `g` a graph builder and `cfg` a typed view of config.json, both exposed
 * from C through luaL_Reg tables with checked arguments. Errors carry the archspec file:line
 * that caused them (a failing op, a missing config field, a Lua runtime error).
 *
 * The DSL's Lua side, archspecs/kiln.lua, is found in `lib_dir` (require "kiln").
 */
#ifndef KILN_SPEC_H
#define KILN_SPEC_H

#include "config.h"
#include "graph.h"
#include "safetensors.h"
#include "util.h"

typedef enum { TASK_GENERATE, TASK_EMBED, TASK_CLASSIFY, TASK_N } spec_task;
const char *spec_task_name(spec_task t);

typedef struct spec_info {
    char *path;   /* the .lua file */
    char *name;   /* the family name it declares */
    int n_archs;
    char **archs; /* HF architecture names it serves */
    spec_task task;
    int n_ignore;
    char **ignore; /* Lua patterns of checkpoint tensors the spec knowingly leaves unused */
} spec_info;

int spec_probe(const char *path, const char *lib_dir, spec_info *out, kerr *err);
void spec_info_free(spec_info *s);

/* Marks in `ignored` the names matching one of the spec's ignore patterns. */
int spec_filter_ignored(const spec_info *spec, const char *const *names, int n,
                        unsigned char *ignored, kerr *err);

/* Builds the graph. `weights` may be NULL (then g:has_weight is false everywhere).
 * Returns NULL on error. */
kgraph *spec_build(const spec_info *spec, const char *lib_dir, const config *cfg,
                   const st_set *weights, kerr *err);

#endif
