# mamlc build. `make` builds the static library and the mamlc binary; `make test` runs the
# Criterion suite, then the same suite again under AddressSanitizer + UBSan.

CC       ?= cc
BUILD    ?= build
CFLAGS   ?= -O2 -g
override CFLAGS += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Icompiler -Iruntime -isystem $(CUDA_HOME)/include -fopenmp
CUDA_HOME ?= /usr/local/cuda
# Data and YAML libraries are linked statically so one mamlc binary runs on machines without them.
STATIC_LIBS := -Wl,-Bstatic -lyaml -lminizip -lpng -lz -Wl,-Bdynamic
LDLIBS   := -lm -ldl -lpthread -fopenmp

LIB_SRC  := $(sort $(wildcard compiler/*.c runtime/*.c))
CLI_SRC  := $(sort $(wildcard cli/*.c))
TEST_SRC := $(sort $(wildcard tests/test_*.c))
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
CLI_OBJ  := $(CLI_SRC:%.c=$(BUILD)/%.o)
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
# Kernel templates are embedded into the library as string constants (templates/embed.sh).
TEMPLATES := $(sort $(wildcard templates/*/*.tmpl))
LIB_OBJ  += $(BUILD)/templates_embedded.o

DEB_PACKAGES := libyaml-dev libcriterion-dev libpng-dev libminizip-dev zlib1g-dev pkg-config

.PHONY: all deps run test test-plain test-asan clean format lint
all: $(BUILD)/libmamlc.a mamlc

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/templates_embedded.c: $(TEMPLATES) templates/embed.sh
	@mkdir -p $(dir $@)
	sh templates/embed.sh templates $(TEMPLATES) > $@.tmp && mv $@.tmp $@

$(BUILD)/templates_embedded.o: $(BUILD)/templates_embedded.c
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/libmamlc.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

mamlc: $(CLI_OBJ) $(BUILD)/libmamlc.a
	$(CC) $(CFLAGS) -o $@ $(CLI_OBJ) $(BUILD)/libmamlc.a $(STATIC_LIBS) $(LDLIBS)

$(BUILD)/tests/%: tests/%.c $(BUILD)/libmamlc.a $(wildcard tests/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests -o $@ $< $(BUILD)/libmamlc.a -lcriterion -lyaml -lminizip -lpng -lz $(LDLIBS)

# The fake CUDA driver (tests/fake_cuda.c) that runs the cuda backend's host code where no GPU is.
$(BUILD)/tests/libcuda-fake.so: tests/fake_cuda.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -fPIC -shared -o $@ $< -ldl

$(BUILD)/tests/test_cuda $(BUILD)/tests/test_faults: $(BUILD)/tests/libcuda-fake.so

# Installs the Debian packages the build needs when any is missing (run as root on a fresh machine).
deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi

# The default job: trains graphs/omniglot_seed.yaml for RUN_SECONDS on the best backend and evaluates
# it; without the Omniglot archives (OMNIGLOT=DIR overrides ../shared/data/omniglot) it trains
# graphs/sinusoid.yaml instead.
OMNIGLOT ?= ../shared/data/omniglot
RUN_SECONDS ?= 150
run: deps all
	@if [ -f "$(OMNIGLOT)/images_background.zip" ] && [ -f "$(OMNIGLOT)/images_evaluation.zip" ]; then \
	  rm -rf runs/make-run && \
	  ./mamlc train graphs/omniglot_seed.yaml --data "$(OMNIGLOT)" --out runs/make-run \
	    --steps 100000 --time-limit $(RUN_SECONDS) --set maml.meta_batch=4 --val-every 0 && \
	  ./mamlc eval graphs/omniglot_seed.yaml --data "$(OMNIGLOT)" --tasks 100 --tasks-per-run 10 \
	    --checkpoint runs/make-run/checkpoint.safetensors && \
	  echo "(chance is 20% for 5-way)" && ./mamlc plot runs/make-run; \
	else \
	  echo "Omniglot archives not found in $(OMNIGLOT): download images_background.zip and"; \
	  echo "images_evaluation.zip (https://github.com/brendenlake/omniglot, folder python/) into a"; \
	  echo "directory and run 'make run OMNIGLOT=DIR'. Training graphs/sinusoid.yaml instead."; \
	  rm -rf runs/make-run-sinusoid && \
	  ./mamlc train graphs/sinusoid.yaml --out runs/make-run-sinusoid --steps 3000 \
	    --time-limit $(RUN_SECONDS) --val-every 1000 --val-tasks 100 && \
	  ./mamlc eval graphs/sinusoid.yaml --checkpoint runs/make-run-sinusoid/checkpoint.safetensors \
	    --tasks-per-run 25 && \
	  ./mamlc plot runs/make-run-sinusoid; \
	fi

test: deps
	$(MAKE) test-plain
	$(MAKE) test-asan
	$(MAKE) fuzz-ci

test-plain: all $(TEST_BIN)
	@MAMLC=$(CURDIR)/mamlc tests/run_all.sh $(BUILD)/tests

test-asan:
	$(MAKE) BUILD=build-asan CFLAGS="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" \
	  STATIC_LIBS="-lyaml -lminizip -lpng -lz" test-plain-asan

test-plain-asan: $(BUILD)/libmamlc.a mamlc-asan $(TEST_BIN)
	@MAMLC=$(CURDIR)/mamlc-asan MAMLC_SANITIZED=1 ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp \
	  tests/run_all.sh $(BUILD)/tests

mamlc-asan: $(CLI_OBJ) $(BUILD)/libmamlc.a
	$(CC) $(CFLAGS) -o $@ $(CLI_OBJ) $(BUILD)/libmamlc.a $(STATIC_LIBS) $(LDLIBS)

# `make bench-cpu`: `mamlc bench --backend cpu` on the default graphs (seed with 1 and 15 queries per
# class, fused and, for q 1, unfused; 5-way 1-shot; sinusoid), JSON into $(BENCH_DIR), then a short
# summary. The PyTorch side of the seed (examples/pytorch_seed_maml.py, Debian's python3-torch) runs
# with the same settings in the same invocation when it is available, and the ratio is printed.
# BENCH_QUICK=1: 3 repetitions per run (not a benchmark; checks that everything runs).
BENCH_DIR    ?= build/bench
BENCH_PYTHON ?= /usr/bin/python3
BENCH_REPS   := $(if $(filter 1,$(BENCH_QUICK)),3,20)
BENCH_WARMUP := $(if $(filter 1,$(BENCH_QUICK)),1,2)
BENCH_KREPS  := $(if $(filter 1,$(BENCH_QUICK)),1,5)

.PHONY: bench-cpu
bench-cpu: all
	@mkdir -p $(BENCH_DIR)
	@set -e; B="--backend cpu --json --reps $(BENCH_REPS) --warmup $(BENCH_WARMUP) --kernel-reps $(BENCH_KREPS)"; \
	field() { sed -n "s/.*\"$$2\": \([-0-9.e+]*\).*/\1/p" "$$1" | head -n 1; }; \
	mb() { echo "mamlc bench $$2 $$3 $$4 $$5"; ./mamlc bench $$2 $$B $$3 $$4 $$5 > $(BENCH_DIR)/$$1.json; }; \
	mb seed_q1 graphs/omniglot_seed.yaml; \
	mb seed_q15 graphs/omniglot_seed.yaml --set maml.q_query=15; \
	if [ "$(BENCH_QUICK)" != 1 ]; then mb seed_q1_nofuse graphs/omniglot_seed.yaml --no-fuse; fi; \
	mb omniglot_5w1s graphs/omniglot_5w1s.yaml; \
	mb sinusoid graphs/sinusoid.yaml; \
	torch=""; \
	if [ -f examples/pytorch_seed_maml.py ] && $(BENCH_PYTHON) -c 'import torch' 2>/dev/null; then torch=1; \
	  for q in 1 15; do echo "pytorch seed q_query $$q"; \
	    $(BENCH_PYTHON) examples/pytorch_seed_maml.py --json --q-query $$q --steps $(BENCH_REPS) \
	      --warmup $(BENCH_WARMUP) > $(BENCH_DIR)/torch_seed_q$$q.json; done; \
	else echo "PyTorch side skipped: needs examples/pytorch_seed_maml.py and $(BENCH_PYTHON) with torch"; fi; \
	echo; printf "%-16s %8s %12s %9s %10s %12s %9s\n" run kernels "step ms" "GFLOP/s" "images/s" "pytorch ms" "speed-up"; \
	for r in seed_q1 seed_q15 seed_q1_nofuse omniglot_5w1s sinusoid; do f=$(BENCH_DIR)/$$r.json; [ -f "$$f" ] || continue; \
	  [ "$$r" != seed_q1_nofuse ] || [ "$(BENCH_QUICK)" != 1 ] || continue; \
	  ms=$$(field $$f step_ms_median); t=""; x=""; \
	  case $$r in seed_q1|seed_q15) tf=$(BENCH_DIR)/torch_$$r.json; \
	    if [ -n "$$torch" ]; then t=$$(field $$tf step_ms_median); x=$$(awk "BEGIN{printf \"%.2fx\", $$t/$$ms}"); \
	      t=$$(awk "BEGIN{printf \"%.1f\", $$t}"); fi;; esac; \
	  printf "%-16s %8s %12.1f %9.1f %10.1f %12s %9s\n" $$r $$(field $$f n_kernels) $$ms $$(field $$f gflops) \
	    $$(field $$f images_per_s) "$$t" "$$x"; done; \
	echo "(JSON with the per-kernel tables in $(BENCH_DIR)/; speed-up = PyTorch step time / mamlc step time)"

# `make gpu-check`: on a machine with a GPU, the CUDA checks and the benchmark in one go
# (scripts/gpu_check.sh: fixtures and 10 training steps against ref, compute-sanitizer, mamlc bench,
# a table last; full log in build/gpu-check/gpu_check.log). `make gpu-check-prep` builds what the
# script runs and gathers the PyTorch fixtures, libgomp and the device tests' libraries (Criterion and
# its dependencies, in gpucheck/testlib: only the tests see them) into build/gpucheck/, for a GPU machine
# that has neither the build dependencies nor ../shared (carry mamlc, build/gpu_compare and
# build/gpucheck, build/tests/test_cuda and build/tests/test_faults there and run scripts/gpu_check.sh).
# It also copies the two Omniglot archives there, for scripts/protocol_20w1s.sh (the 20-way run).
SHARED ?= ../shared
$(BUILD)/gpu_compare: scripts/gpu_compare.c $(BUILD)/libmamlc.a
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libmamlc.a $(STATIC_LIBS) $(LDLIBS)

.PHONY: gpu-check gpu-check-prep
gpu-check-prep: all $(BUILD)/gpu_compare $(BUILD)/tests/test_cuda $(BUILD)/tests/test_faults
	@mkdir -p $(BUILD)/gpucheck/shared/fixtures/pytorch_maml $(BUILD)/gpucheck/lib $(BUILD)/gpucheck/testlib
	@mkdir -p $(BUILD)/gpucheck/shared/data/omniglot
	cp -f $(SHARED)/fixtures/pytorch_maml/* $(BUILD)/gpucheck/shared/fixtures/pytorch_maml/
	cp -f $(SHARED)/data/omniglot/images_background.zip $(SHARED)/data/omniglot/images_evaluation.zip \
	    $(BUILD)/gpucheck/shared/data/omniglot/
	cp -f "$$($(CC) -print-file-name=libgomp.so.1)" $(BUILD)/gpucheck/lib/
	ldd $(BUILD)/tests/test_cuda $(BUILD)/tests/test_faults | awk '/=> \// {print $$3}' | \
	    grep -Ev '/(libc|libm|libdl|libpthread|librt|libgomp)\.so' | sort -u | \
	    xargs -r cp -fL -t $(BUILD)/gpucheck/testlib/

gpu-check: all $(BUILD)/gpu_compare
	scripts/gpu_check.sh

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

# clang-tidy (checks in .clang-tidy) and cppcheck; any warning fails the target, so the code base
# stays at zero.
lint:
	clang-tidy --quiet --warnings-as-errors='*' $(LIB_SRC) $(CLI_SRC) -- $(CFLAGS)
	cppcheck --quiet --error-exitcode=1 --enable=warning,performance,portability -Icompiler -Iruntime compiler runtime cli
	clang-format --dry-run --Werror $$(git ls-files '*.c' '*.h')

clean:
	rm -rf build build-asan build-fuzz mamlc mamlc-asan

include fuzz.mk

-include $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d)
