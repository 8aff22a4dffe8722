# libFuzzer targets (tests/fuzz/), built with clang into $(FUZZ_BUILD), apart from the gcc build.
#
#   make fuzz-build            build the four fuzzers
#   make fuzz-ci               run each for FUZZ_SECONDS (60), FUZZ_JOBS (2) at a time; fail on
#                              any crash, leak or hang
#   make fuzz                  the same for 600 s each
#   make fuzz-clean            remove $(FUZZ_BUILD) (working corpora, crash artifacts, logs)
#   make valgrind              valgrind memcheck on mamlc check, compile and grad for every shipped
#                              graph (scripts/valgrind_check.sh; logs in $(VALGRIND_OUT))
#
# Include it at the end of the Makefile (after DEB_PACKAGES is defined). Everything libFuzzer
# writes (grown corpora, crash-* files, logs) stays under $(FUZZ_BUILD); the seeds in
# tests/fuzz/corpus/ are copied there first and never modified.

FUZZ_CC      ?= clang
FUZZ_BUILD   ?= build-fuzz
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := yaml safetensors png_zip overrides
# No -fopenmp: the Omniglot decode then runs on one thread, so an input always takes the same
# path (and `#pragma omp` is just ignored, hence -Wno-unknown-pragmas).
FUZZ_CFLAGS  := -std=c11 -D_GNU_SOURCE -O1 -g -fno-omit-frame-pointer -Wall -Wextra -Werror \
                -Wno-unknown-pragmas -Icompiler -Iruntime -Itests/fuzz -isystem $(CUDA_HOME)/include
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=all
FUZZ_LIBS    := -lyaml -lminizip -lpng -lz -lm -ldl -lpthread

FUZZ_LIB_OBJ := $(LIB_SRC:%.c=$(FUZZ_BUILD)/obj/%.o)
# The kernel templates the Makefile embeds into the library, when it does (the C file it generates).
ifneq ($(TEMPLATES),)
FUZZ_LIB_OBJ += $(FUZZ_BUILD)/obj/templates_embedded.o
endif
FUZZ_BINS    := $(FUZZ_TARGETS:%=$(FUZZ_BUILD)/fuzz_%)

# The fuzzers need clang and its libFuzzer runtime (Debian's clang package brings both).
DEB_PACKAGES += clang

.PHONY: fuzz fuzz-ci fuzz-build fuzz-clean

# Library objects carry coverage instrumentation but no main: libFuzzer's main comes at link.
$(FUZZ_BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) $(FUZZ_SAN) -fsanitize=fuzzer-no-link -MMD -MP -c $< -o $@

$(FUZZ_BUILD)/obj/templates_embedded.o: $(BUILD)/templates_embedded.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) $(FUZZ_SAN) -fsanitize=fuzzer-no-link -c $< -o $@

$(FUZZ_BUILD)/libmamlc-fuzz.a: $(FUZZ_LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(FUZZ_BUILD)/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz_common.h $(FUZZ_BUILD)/libmamlc-fuzz.a
	$(FUZZ_CC) $(FUZZ_CFLAGS) $(FUZZ_SAN) -fsanitize=fuzzer -MMD -MP -o $@ $< \
	  $(FUZZ_BUILD)/libmamlc-fuzz.a $(FUZZ_LIBS)

# The regression and limit tests (built by the Makefile's tests/test_%.c rule) share the harness.
$(BUILD)/tests/test_fuzz_regressions $(BUILD)/tests/test_limits: tests/fuzz/fuzz_common.h

fuzz-build: $(FUZZ_BINS)

fuzz-ci: fuzz-build
	@tests/fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_SECONDS) $(FUZZ_TARGETS)

fuzz:
	$(MAKE) fuzz-ci FUZZ_SECONDS=600

fuzz-clean:
	rm -rf $(FUZZ_BUILD)

# ---- valgrind ----------------------------------------------------------------------------------
# `make valgrind` runs scripts/valgrind_check.sh on the gcc build: memcheck on `mamlc check`,
# `compile` and `grad` (ref backend, one task; plus cpu on sinusoid) for every graphs/*.yaml, with
# tests/valgrind.supp. It takes several minutes, so it is not part of `make test`. Installs
# valgrind when it is missing (as root).
VALGRIND_OUT ?= $(BUILD)/valgrind

.PHONY: valgrind
$(BUILD)/tests/make_inputs: tests/make_inputs.c $(BUILD)/libmamlc.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libmamlc.a $(STATIC_LIBS) $(LDLIBS)

valgrind: all $(BUILD)/tests/make_inputs
	@command -v valgrind >/dev/null || { echo "installing: valgrind"; apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind; }
	@MAMLC=./mamlc MAKE_INPUTS=$(BUILD)/tests/make_inputs VALGRIND_OUT=$(VALGRIND_OUT) \
	  scripts/valgrind_check.sh

-include $(FUZZ_LIB_OBJ:.o=.d) $(FUZZ_BINS:=.d)
