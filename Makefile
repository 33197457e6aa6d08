# kiln — one build for the compiler (kilnc), the runtime library and CLI (kiln), and the tests.
#
#   make            build out/bin/kilnc, out/bin/kiln, out/bin/kiln-standalone, out/lib/libkiln.a
#   make test       everything CI runs: unit tests, then the same tests under ASan+UBSan
#   make demo       install what is missing, build, and run the bundled example
#   make deps       install the Debian packages the build needs (only those missing)
#   make SAN=1 ...  any target with AddressSanitizer+UBSan, objects under out/san/
#
# Lua, jansson, PCRE2, utf8proc and xxHash are linked statically: the GPU machines have none of them
# (see ../shared/GPU.md). NVRTC is linked normally; libcuda, cuBLASLt (runtime/gemm.c: only for
# an artifact with cuBLASLt steps) and NCCL are dlopen'd.

CUDA    ?= /usr/local/cuda
CC      ?= gcc
SAN     ?= 0

ifeq ($(SAN),1)
B       := out/san
SANFLAGS := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
else
B       := out
SANFLAGS :=
endif

# -gz: debug sections compressed (zlib) in objects and executables, about a fifth of the build's
# disk (CI machines can be short of it); gdb and the sanitizers' stack traces read them as before.
DEBUG    := -g -gz
WARN     := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wno-unused-parameter -Wno-sign-compare
# -iquote, not -I: kiln's headers are found by #include "x.h" only, so runtime/sched.h does not
# shadow the system <sched.h> that <pthread.h> includes.
CFLAGS   := -std=c11 -O2 $(DEBUG) -D_GNU_SOURCE $(WARN) $(SANFLAGS) -MMD -MP \
            -iquote runtime -iquote compiler -I/usr/include/lua5.4 -I$(CUDA)/include \
            -DKILN_SOURCE_DIR=\"$(CURDIR)\"
# The commit `kiln --version` and `kilnc --version` print: git describe, "unknown" without git (or
# KILN_COMMIT=... from the environment). The header is rewritten only when the text changes, so
# only the two main.o files rebuild when it does.
KILN_COMMIT ?= $(shell git describe --always --dirty 2>/dev/null || echo unknown)
CFLAGS   += -I$(B)/gen
LDFLAGS  := $(SANFLAGS) $(DEBUG) -L$(CUDA)/lib64 -Wl,-rpath,$(CUDA)/lib64
STATIC   := -l:liblua5.4.a -l:libjansson.a -l:libpcre2-8.a -l:libutf8proc.a -l:libxxhash.a
SYSLIBS  := -lm -ldl -lpthread
# kiln serve's HTTP library, libmicrohttpd: static (the GPU machine has none), built here from
# Debian's source package without HTTPS (Debian's libmicrohttpd.a needs GnuTLS, which Debian ships
# only as a shared library, and kiln serves plain HTTP), so kiln and kiln-standalone need no GnuTLS.
# One copy for both builds (it is not sanitised); its source and build tree are removed once it is
# installed, as is apt's download of it (38 MB otherwise, per build).
MHD_DIR  := out/deps/microhttpd
HTTPLIBS := $(MHD_DIR)/lib/libmicrohttpd.a
CUDALIBS := -lnvrtc

# ---- sources (listed, not globbed) ----
RUNTIME_SRC := runtime/util.c runtime/safetensors.c runtime/kcuda.c runtime/artifact.c runtime/hash.c runtime/standalone.c \
               runtime/gemm.c runtime/roofline.c runtime/bench_report.c runtime/comm.c runtime/engine.c runtime/backend.c runtime/kvcache.c runtime/sched.c \
               runtime/tokenizer/tokenizer.c runtime/tokenizer/tok_util.c runtime/tokenizer/tok_text.c runtime/tokenizer/tok_model.c \
               runtime/tokenizer/chat_template.c runtime/tokenizer/jinja_value.c runtime/tokenizer/jinja_parse.c runtime/tokenizer/jinja_eval.c \
               runtime/server/openai.c runtime/server/metrics.c
RUNTIME_CMD := runtime/cmd_tokenize.c runtime/cmd_run.c runtime/cmd_backend.c runtime/cmd_inspect.c runtime/cmd_chat_template.c \
               runtime/cmd_serve.c runtime/cmd_bench.c runtime/cmd_perplexity.c runtime/server/http.c
COMPILER_SRC := compiler/pipeline.c compiler/config.c compiler/graph.c compiler/spec.c compiler/registry.c \
                compiler/passes/verify.c compiler/passes/bind_weights.c compiler/passes/shard.c compiler/passes/fuse.c compiler/passes/plan_memory.c compiler/passes/finite.c compiler/lower.c compiler/pack.c \
                compiler/posenc.c compiler/ref.c compiler/knvrtc.c compiler/bundle.c compiler/overrides.c compiler/backend_ref.c compiler/synth.c compiler/quant.c compiler/gptq.c
# Runtime tests link libkiln.a only; compiler tests link both libraries.
RUNTIME_TESTS  := safetensors tokenizer chat_template backend sched tp_runtime launch
COMPILER_TESTS := config overrides graph spec registry cli ref compile example artifact badinput server run_cpu synth tp bench quant gptq gemm invariant perplexity kv8 lower

RUNTIME_OBJ  := $(RUNTIME_SRC:%.c=$(B)/obj/%.o)
COMPILER_OBJ := $(COMPILER_SRC:%.c=$(B)/obj/%.o)
TEST_BINS    := $(RUNTIME_TESTS:%=$(B)/tests/test_%) $(COMPILER_TESTS:%=$(B)/tests/test_%)
# Fuzz targets (tests/fuzz/fuzz_NAME.c; see the fuzzing rules below): make check replays their corpora.
FUZZ_TARGETS := safetensors config tokenizer_load tokenizer artifact archspec chat_template
FUZZ_REPLAY  := $(FUZZ_TARGETS:%=$(B)/tests/fuzz/replay_%)

.PHONY: all test check deps demo clean
all: $(B)/bin/kilnc $(B)/bin/kiln $(B)/bin/kiln-standalone $(B)/lib/libkiln.a

$(B)/obj/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -c $< -o $@

$(B)/obj/tests/gpu/%.o: tests/gpu/%.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -Itests/gpu -c $< -o $@

$(B)/lib/libkiln.a: $(RUNTIME_OBJ)
	@mkdir -p $(@D)
	$(AR) rcs $@ $^

$(B)/lib/libkilnc.a: $(COMPILER_OBJ)
	@mkdir -p $(@D)
	$(AR) rcs $@ $^

$(B)/bin/kilnc: $(B)/obj/compiler/main.o $(B)/lib/libkilnc.a $(B)/lib/libkiln.a
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $^ $(STATIC) $(CUDALIBS) $(SYSLIBS)

# The kernel test harness: run on the GPU machine by tests/gpu/run.sh; without a GPU it only
# compiles every kernel case for sm_80 and sm_90a (make check runs that).
KTEST_SRC := tests/gpu/ktest.c tests/gpu/ktest_elementwise.c tests/gpu/ktest_gemv.c tests/gpu/ktest_gemm.c \
             tests/gpu/ktest_skinny.c tests/gpu/ktest_attention.c tests/gpu/ktest_mla.c tests/gpu/ktest_moe.c \
             tests/gpu/ktest_sample.c tests/gpu/ktest_collective.c tests/gpu/ktest_pdl.c
$(B)/bin/kiln-ktest: $(KTEST_SRC:%.c=$(B)/obj/%.o) $(B)/lib/libkilnc.a $(B)/lib/libkiln.a
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $^ $(STATIC) $(CUDALIBS) $(SYSLIBS)

$(B)/gen/kiln_commit.h: FORCE
	@mkdir -p $(@D)
	@echo '#define KILN_COMMIT "$(KILN_COMMIT)"' > $@.tmp
	@if cmp -s $@.tmp $@; then rm -f $@.tmp; else mv -f $@.tmp $@; fi
$(B)/obj/compiler/main.o $(B)/obj/runtime/main.o: $(B)/gen/kiln_commit.h
.PHONY: FORCE
FORCE:

$(B)/bin/kiln: $(B)/obj/runtime/main.o $(RUNTIME_CMD:%.c=$(B)/obj/%.o) $(B)/lib/libkilnc.a $(B)/lib/libkiln.a
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $^ $(STATIC) $(HTTPLIBS) $(CUDALIBS) $(SYSLIBS)

# kiln-standalone: the runtime kilnc compile --standalone appends a model to (runtime/standalone.h).
# main.c built with KILN_STANDALONE and no compiler library: nothing dynamic but glibc (checked by
# tests/standalone/run.sh); libcuda, cuBLASLt and NCCL are dlopen'd where a model needs them. Linked
# without LDFLAGS' rpath: no path of the build machine's CUDA toolkit goes into an executable that
# is copied to other machines (the target's dynamic loader finds the driver where it is installed).
$(B)/obj/standalone/main.o: runtime/main.c $(B)/gen/kiln_commit.h
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -DKILN_STANDALONE -c $< -o $@
$(B)/bin/kiln-standalone: $(B)/obj/standalone/main.o $(RUNTIME_CMD:%.c=$(B)/obj/%.o) $(B)/lib/libkiln.a
	@mkdir -p $(@D)
	$(CC) $(SANFLAGS) $(DEBUG) -o $@ $^ $(STATIC) $(HTTPLIBS) $(SYSLIBS)

# libmicrohttpd from Debian's source package (the version Debian 12 ships), configured without
# HTTPS; apt-get fetches it into $(MHD_DIR) with its own source list (no change to the system's
# apt configuration; hashes checked against Debian's signed index).
$(B)/obj/runtime/server/http.o: CFLAGS += -I$(MHD_DIR)/include
$(B)/obj/runtime/server/http.o: $(HTTPLIBS)
$(HTTPLIBS):
	@rm -rf $(MHD_DIR) && mkdir -p $(MHD_DIR)/apt/lists/partial $(MHD_DIR)/apt/archives/partial $(MHD_DIR)/src
	@echo 'deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main' > $(MHD_DIR)/apt/sources.list
	@echo "building libmicrohttpd without HTTPS from Debian's source package (log: $(MHD_DIR)/build.log)"
	@apt="apt-get -q -o Dir::Etc::SourceList=$(abspath $(MHD_DIR))/apt/sources.list -o Dir::Etc::SourceParts=/dev/null \
	  -o Dir::State::Lists=$(abspath $(MHD_DIR))/apt/lists -o Dir::Cache=$(abspath $(MHD_DIR))/apt \
	  -o Dir::Cache::archives=$(abspath $(MHD_DIR))/apt/archives -o APT::Sandbox::User=root"; \
	cd $(MHD_DIR)/src && { $$apt update && $$apt source --download-only libmicrohttpd && \
	  dpkg-source -x libmicrohttpd_*.dsc mhd && cd mhd && \
	  ./configure --disable-https --without-gnutls --disable-shared --enable-static --disable-doc \
	    --disable-examples --disable-curl --prefix=$(abspath $(MHD_DIR)) && \
	  $(MAKE) -C src/microhttpd install && $(MAKE) -C src/include install; } > ../build.log 2>&1 || \
	  { tail -20 ../build.log; echo "libmicrohttpd: the build failed (log: $(MHD_DIR)/build.log)"; exit 1; }
	@rm -rf $(MHD_DIR)/src $(MHD_DIR)/apt
	@! nm $@ | grep -q ' U gnutls_' || { echo "$@ still needs GnuTLS"; exit 1; }

$(RUNTIME_TESTS:%=$(B)/tests/test_%): $(B)/tests/test_%: $(B)/obj/tests/test_%.o $(B)/lib/libkiln.a
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $^ $(STATIC) -lcmocka $(SYSLIBS)

$(COMPILER_TESTS:%=$(B)/tests/test_%): $(B)/tests/test_%: $(B)/obj/tests/test_%.o $(B)/lib/libkilnc.a $(B)/lib/libkiln.a
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $^ $(STATIC) -lcmocka $(CUDALIBS) $(SYSLIBS)

# Runs every unit test from the repository root (fixtures are found by relative path). The
# CLI tests find the binaries through KILNC / KILN.
# Without a GPU, kiln-ktest compiles every kernel test case for sm_80 and sm_90a (plain build only:
# NVRTC is not sanitised).
check: all $(TEST_BINS) $(FUZZ_REPLAY) $(if $(filter 0,$(SAN)),$(B)/bin/kiln-ktest)
	@fail=0; for t in $(TEST_BINS); do \
	  echo "== $$t"; \
	  KILNC=$(B)/bin/kilnc KILN=$(B)/bin/kiln $$t || fail=1; \
	done; \
	for t in $(FUZZ_TARGETS); do echo "== fuzz corpus replay: $$t"; \
	  $(B)/tests/fuzz/replay_$$t tests/fuzz/corpus/$$t tests/fuzz/crashes/$$t || fail=1; \
	done; \
	if [ "$(SAN)" = 0 ]; then echo "== kernel templates (kiln-ktest --compile-only)"; \
	  KILN_ROOT=. $(B)/bin/kiln-ktest --compile-only > $(B)/ktest-compile.log 2>&1 || \
	  { cat $(B)/ktest-compile.log; fail=1; }; tail -1 $(B)/ktest-compile.log; fi; \
	echo "== standalone executables (tests/standalone/run.sh; log $(B)/standalone-tests.log)"; \
	SAN=$(SAN) tests/standalone/run.sh $(B) > $(B)/standalone-tests.log 2>&1 || \
	  { cat $(B)/standalone-tests.log; fail=1; }; tail -1 $(B)/standalone-tests.log; \
	echo "== kiln serve over HTTP (tests/server/run.sh; log $(B)/server-tests.log)"; \
	tests/server/run.sh $(B)/bin/kiln > $(B)/server-tests.log 2>&1 || \
	  { cat $(B)/server-tests.log; fail=1; }; tail -1 $(B)/server-tests.log; \
	if [ $$fail = 0 ]; then echo "== all tests passed ($(B))"; else echo "== TESTS FAILED ($(B))"; exit 1; fi

test: deps
	$(MAKE) check
	$(MAKE) SAN=1 check

# ---- tokenizer benchmark: a 128k-vocab byte-level BPE trained by the fixture script (needs a
# python with HF tokenizers: TOK_PYTHON=...), then encode MB/s; see tests/bench_tokenizer.c
TOK_PYTHON ?= python3
TOK_BENCH  := out/bench/tokenizer
$(TOK_BENCH)/tokenizer.json: tests/fixtures/tokenizers/make_tokenizer_fixtures.py
	$(TOK_PYTHON) $< --bench $(TOK_BENCH)
$(B)/tests/bench_tokenizer: $(B)/obj/tests/bench_tokenizer.o $(B)/lib/libkiln.a
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $^ $(STATIC) $(SYSLIBS)
.PHONY: bench-tokenizer
bench-tokenizer: $(B)/tests/bench_tokenizer $(TOK_BENCH)/tokenizer.json
	$(B)/tests/bench_tokenizer $(TOK_BENCH)/tokenizer.json $(TOK_BENCH)/bench.txt

# ---- fuzzing (tests/fuzz/README.md): one libFuzzer target per file, tests/fuzz/fuzz_NAME.c, with its
# seed corpus in tests/fuzz/corpus/NAME/, reproducers in tests/fuzz/crashes/NAME/ and an optional
# dictionary tests/fuzz/NAME.dict. A new target needs only its name added to FUZZ_TARGETS.
#   make fuzz [FUZZ_SECONDS=60] [FUZZ_TARGETS="config tokenizer"]   builds with clang (ASan+UBSan)
#       under out/fuzz/clang and runs each target in turn; new inputs and crashes go to
#       out/fuzz/run/NAME/, never into the committed corpus. Run it with nice -n 19 on shared machines.
#   make check  replays every committed corpus file and reproducer with gcc (tests/fuzz/replay.c).
FUZZ_PKGS    := clang-14 libclang-rt-14-dev
FUZZ_CC      := clang-14
FUZZ_SECONDS ?= 60
FUZZ_TIMEOUT ?= 10
FUZZ_RSS_MB  ?= 2048
FUZZ_B       := out/fuzz/clang
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
# KILN_SOURCE_DIR ".": the targets find fixtures and archspecs from the folder they run in, so
# they run from the repository root of any copy of the tree (tests/gpu/fuzz.sh on the GPU machine).
FUZZ_CFLAGS  := $(filter-out $(SANFLAGS) -DKILN_SOURCE_DIR=%,$(CFLAGS)) -DKILN_SOURCE_DIR=\".\" \
                $(FUZZ_SAN) -fsanitize=fuzzer-no-link

$(FUZZ_B)/obj/%.o: %.c
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -c $< -o $@
$(FUZZ_B)/libkiln.a: $(RUNTIME_SRC:%.c=$(FUZZ_B)/obj/%.o)
	$(AR) rcs $@ $^
$(FUZZ_B)/libkilnc.a: $(COMPILER_SRC:%.c=$(FUZZ_B)/obj/%.o)
	$(AR) rcs $@ $^
$(FUZZ_B)/fuzz_%: $(FUZZ_B)/obj/tests/fuzz/fuzz_%.o $(FUZZ_B)/libkilnc.a $(FUZZ_B)/libkiln.a
	$(FUZZ_CC) $(FUZZ_SAN) -fsanitize=fuzzer $(filter-out $(SANFLAGS),$(LDFLAGS)) -o $@ $^ \
	  $(STATIC) $(CUDALIBS) $(SYSLIBS)
$(B)/tests/fuzz/replay_%: $(B)/obj/tests/fuzz/fuzz_%.o $(B)/obj/tests/fuzz/replay.o $(B)/lib/libkilnc.a $(B)/lib/libkiln.a
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $^ $(STATIC) $(CUDALIBS) $(SYSLIBS)

.PHONY: fuzz fuzz-deps fuzz-build fuzz-dist
fuzz-deps:
	@missing=$$(for p in $(FUZZ_PKGS); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
	  echo "make fuzz-deps: installing$$(echo ' '$$missing)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi
fuzz-build: fuzz-deps
	$(MAKE) $(FUZZ_TARGETS:%=$(FUZZ_B)/fuzz_%)
# fuzz-dist: the targets in one folder to carry to the GPU machine (tests/gpu/fuzz.sh runs them
# there), with the commit they were built from. Nothing in them is dynamic but glibc, libstdc++,
# libgcc and CUDA's NVRTC (checked here), so they run where there is no clang. They
# keep their debug information (about 23 MB in all; stripped, 20): ASan names functions and lines
# through addr2line there.
FUZZ_DIST := out/fuzz/dist
FUZZ_LIBS_OK := linux-vdso|libc|libm|libstdc\+\+|libgcc_s|libpthread|librt|libdl|ld-linux-x86-64|libnvrtc
fuzz-dist: fuzz-build
	rm -rf $(FUZZ_DIST) && mkdir -p $(FUZZ_DIST)
	@for t in $(FUZZ_TARGETS); do \
	  other=$$(ldd $(FUZZ_B)/fuzz_$$t | awk '{print $$1}' | grep -vE '^/?(.*/)?($(FUZZ_LIBS_OK))\.so' ); \
	  [ -z "$$other" ] || { echo "fuzz-dist: fuzz_$$t needs $$other, which the GPU machine lacks: link it statically"; exit 1; }; \
	  cp $(FUZZ_B)/fuzz_$$t $(FUZZ_DIST)/; \
	done
	echo $(KILN_COMMIT) > $(FUZZ_DIST)/COMMIT
	@du -sh $(FUZZ_DIST)
fuzz: fuzz-build
	@fail=0; for t in $(FUZZ_TARGETS); do \
	  r=out/fuzz/run/$$t; mkdir -p $$r/corpus $$r/crashes; \
	  echo "== fuzz $$t for $(FUZZ_SECONDS) s (log: $$r/log)"; \
	  $(FUZZ_B)/fuzz_$$t $$r/corpus tests/fuzz/corpus/$$t $$(ls -d tests/fuzz/crashes/$$t 2>/dev/null) \
	    $$([ -f tests/fuzz/$$t.dict ] && echo -dict=tests/fuzz/$$t.dict) \
	    -max_total_time=$(FUZZ_SECONDS) -timeout=$(FUZZ_TIMEOUT) -rss_limit_mb=$(FUZZ_RSS_MB) \
	    -artifact_prefix=$$r/crashes/ -print_final_stats=1 > $$r/log 2>&1 || \
	    { fail=1; echo "== fuzz $$t: FINDING (see $$r/crashes/)"; grep -m1 -A25 'ERROR:\|runtime error:\|contract broken' $$r/log; }; \
	  grep -h 'stat::number_of_executed_units\|stat::average_exec_per_sec' $$r/log; \
	done; exit $$fail

# ---- dependencies: Debian packages, installed only when missing ----
DEB_PKGS := liblua5.4-dev libjansson-dev libcmocka-dev libpcre2-dev libutf8proc-dev libxxhash-dev \
            dpkg-dev xz-utils python3-venv curl
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
deps:
	@missing=$$(for p in $(DEB_PKGS); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
	  echo "make deps: installing$$(echo ' '$$missing)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	else echo "make deps: all packages present"; fi
	@test -x $(CUDA)/bin/nvcc || test -f $(CUDA)/include/nvrtc.h || \
	  { echo "make deps: the CUDA toolkit is not in $(CUDA) (set CUDA=...); see README.md"; exit 1; }

demo: deps all
	examples/demo.sh

clean:
	rm -rf out

-include $(shell find out -name '*.d' 2>/dev/null)
