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

$(BUILD)/tests/%: tests/%.c $(BUILD)/libmamlc.a tests/test_util.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests -o $@ $< $(BUILD)/libmamlc.a -lcriterion -lyaml -lminizip -lpng -lz $(LDLIBS)

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
	  tests/run_all.sh $(BUILD)/tests

mamlc-asan: $(CLI_OBJ) $(BUILD)/libmamlc.a
	$(CC) $(CFLAGS) -o $@ $(CLI_OBJ) $(BUILD)/libmamlc.a $(STATIC_LIBS) $(LDLIBS)

format:
	clang-format -i compiler/*.[ch] runtime/*.[ch] cli/*.[ch] tests/*.[ch]

lint:
	clang-tidy --quiet $(LIB_SRC) $(CLI_SRC) -- $(CFLAGS)
	cppcheck --quiet --error-exitcode=1 --enable=warning,performance,portability -Icompiler -Iruntime compiler runtime cli

clean:
	rm -rf build build-asan build-fuzz mamlc mamlc-asan

include fuzz.mk

-include $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d)
