/* bundle — `kilnc compile --standalone`: the model folder kilnc compile wrote, packed with the
 * runtime into one executable (format: runtime/standalone.h). */
#ifndef KILN_BUNDLE_H
#define KILN_BUNDLE_H

#include "artifact.h"
#include "util.h"

/* kiln-standalone in the folder of the running kilnc (make builds both into out/bin); malloc'd. */
char *bundle_runtime_path(void);

/* Writes OUT_DIR/NAME from RUNTIME and what OUT_DIR holds: model.kiln and the tokenizer files,
 * and M's shards (appended, page-aligned, with EMBED_WEIGHTS; else named, to be read from
 * OUT_DIR/shards beside it). */
int bundle_write(const char *runtime, const char *out_dir, const char *name, const ka_manifest *m,
                 int embed_weights, kerr *err);

#endif
