# ssegate — see README.md. `make` builds ./ssegate (static), `make run` runs it,
# `make test` runs every suite (also under ASan/UBSan), `make fuzz` fuzzes the parsers.

CC      ?= cc
FUZZ_CC ?= clang
PYTHON  ?= python3
DEPS_STAMP := third_party/include/bearssl.h third_party/include/jsmn.h third_party/lib/libbearssl.a

WARN     := -Wall -Wextra -Werror -Wshadow -Wconversion -Wstrict-prototypes -Wvla
CPPFLAGS := -D_GNU_SOURCE -Isrc -isystem third_party/include
CFLAGS   ?= -O2 -g
CFLAGS   += -std=c17 $(WARN) -fno-strict-aliasing -ffunction-sections -fdata-sections
LDLIBS   := third_party/lib/libbearssl.a

SAN_FLAGS := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined

LIB_SRC  := $(wildcard src/*/*.c)
LIB_OBJ  := $(LIB_SRC:src/%.c=build/obj/%.o)
SAN_OBJ  := $(LIB_SRC:src/%.c=build/asan/%.o)
UNIT_SRC := $(wildcard tests/unit/*.c)

.PHONY: all run test unit integration sdk test-asan fuzz bench clean deps
all: ssegate tools/mock-upstream

deps: $(DEPS_STAMP)
$(DEPS_STAMP):
	sh third_party/fetch.sh

build/obj/%.o: src/%.c $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) -MMD -MP -c $< -o $@
build/asan/%.o: src/%.c $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) -std=c17 $(WARN) $(SAN_FLAGS) -MMD -MP -c $< -o $@
build/fuzz:
	mkdir -p $@

build/libssegate.a: $(LIB_OBJ)
	rm -f $@ && ar rcs $@ $^
build/libssegate-asan.a: $(SAN_OBJ)
	rm -f $@ && ar rcs $@ $^

# The built-in chat page: src/web/* as byte arrays in build/gen/web_assets.c
# (tools/embed.c), compiled into both libraries.
WEB_FILES := $(sort $(wildcard src/web/*))
build/embed: tools/embed.c
	@mkdir -p $(@D)
	$(CC) -std=c17 $(WARN) -O2 -o $@ $<
build/gen/web_assets.c: build/embed $(WEB_FILES)
	@mkdir -p $(@D)
	build/embed $@ $(WEB_FILES)
build/obj/gen/web_assets.o: build/gen/web_assets.c src/http/page.h $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c $< -o $@
build/asan/gen/web_assets.o: build/gen/web_assets.c src/http/page.h $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) -std=c17 $(WARN) $(SAN_FLAGS) -c $< -o $@
build/libssegate.a: build/obj/gen/web_assets.o
build/libssegate-asan.a: build/asan/gen/web_assets.o

# The binary users ship: static, unused sections dropped, symbols stripped.
# With musl-gcc (Debian's musl-tools) it is built against musl, else against
# glibc; build/ssegate-full is the same before stripping (for profiles).
# Only the release binary changes libc: tests, ASan and fuzz builds use $(CC).
ifeq ($(origin MUSL_GCC),undefined)
MUSL_GCC := $(shell command -v musl-gcc 2>/dev/null)
endif
# -O2, not -Os: -Os saves 44 KiB but costs 11-15% more instructions per
# request. No unwind tables: C needs none, and they are 16 KiB (a debugger
# unwinds with build/ssegate-full's debug info instead).
RELEASE_CFLAGS ?= -O2 -g -fno-asynchronous-unwind-tables -fno-unwind-tables
RELEASE_LIBC := $(if $(MUSL_GCC),musl,glibc)
MUSL_OBJ := $(LIB_SRC:src/%.c=build/musl/%.o)
# Holds the libc and flags of the last release build, rewritten only when
# they change, so that switching either rebuilds what depends on them.
build/release.flags: FORCE
	@mkdir -p $(@D)
	@echo '$(RELEASE_LIBC) $(MUSL_GCC) $(RELEASE_CFLAGS)' | cmp -s - $@ || \
	  echo '$(RELEASE_LIBC) $(MUSL_GCC) $(RELEASE_CFLAGS)' >$@
FORCE:
build/musl/%.o: src/%.c build/release.flags $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(MUSL_GCC) $(CPPFLAGS) $(RELEASE_CFLAGS) -std=c17 $(WARN) -fno-strict-aliasing \
	  -ffunction-sections -fdata-sections -MMD -MP -c $< -o $@
build/libssegate-musl.a: $(MUSL_OBJ) build/musl/gen/web_assets.o
	rm -f $@ && ar rcs $@ $^
build/musl/gen/web_assets.o: build/gen/web_assets.c src/http/page.h build/release.flags $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(MUSL_GCC) $(CPPFLAGS) $(RELEASE_CFLAGS) -std=c17 $(WARN) -c $< -o $@
ifeq ($(RELEASE_LIBC),musl)
# fortify.o by name: libbearssl.a, linked after our archive, needs it.
RELEASE_INPUTS := build/musl/main.o build/musl/core/fortify.o build/libssegate-musl.a
build/ssegate-full: $(RELEASE_INPUTS) build/release.flags
	$(MUSL_GCC) -static $(RELEASE_CFLAGS) -Wl,--gc-sections -o $@ $(RELEASE_INPUTS) $(LDLIBS)
else
RELEASE_INPUTS := build/obj/main.o build/libssegate.a
build/ssegate-full: $(RELEASE_INPUTS) build/release.flags
	$(CC) -static $(CFLAGS) -Wl,--gc-sections -o $@ $(RELEASE_INPUTS) $(LDLIBS)
endif
SIZE_LINE = echo "ssegate: static, $(RELEASE_LIBC), $$(( ($$(stat -c %s ssegate) + 1023) / 1024 )) KiB"
ssegate: build/ssegate-full
	strip -o $@ $<
	@$(SIZE_LINE)
size: ssegate
	@$(SIZE_LINE)
.PHONY: size FORCE

build/ssegate-asan: build/asan/main.o build/libssegate-asan.a
	$(CC) $(SAN_FLAGS) -o $@ $^ $(LDLIBS)

tools/mock-upstream: tools/mock.c build/libssegate.a
	$(CC) $(CPPFLAGS) $(CFLAGS) -o $@ $^ $(LDLIBS)
build/mock-upstream-asan: tools/mock.c build/libssegate-asan.a
	$(CC) $(CPPFLAGS) -std=c17 $(WARN) $(SAN_FLAGS) -o $@ $^ $(LDLIBS)

build/unit-tests: $(UNIT_SRC) tests/unit/unit.h build/libssegate.a
	$(CC) $(CPPFLAGS) $(CFLAGS) -Itests/unit -o $@ $(UNIT_SRC) build/libssegate.a $(LDLIBS)
build/unit-tests-asan: $(UNIT_SRC) tests/unit/unit.h build/libssegate-asan.a
	$(CC) $(CPPFLAGS) -std=c17 $(WARN) $(SAN_FLAGS) -Itests/unit -o $@ $(UNIT_SRC) build/libssegate-asan.a $(LDLIBS)

build/unit-tests build/unit-tests-asan: tests/unit/dns_msg.h

run: ssegate
	./ssegate $(ARGS)

# Every suite, then again under AddressSanitizer + UndefinedBehaviorSanitizer.
TEST_BINS := ssegate tools/mock-upstream build/unit-tests \
             build/ssegate-asan build/mock-upstream-asan build/unit-tests-asan
test: $(TEST_BINS)
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	tests/run-suites.sh \
	  "unit::./build/unit-tests" \
	  "integration::$(PYTHON) tests/integration/run.py --gateway ./ssegate --mock tools/mock-upstream" \
	  "sdk::tests/sdk/run.sh ./ssegate tools/mock-upstream" \
	  "deploy::tests/deploy/run.sh ./ssegate" \
	  "browser::tests/browser/run.sh ./ssegate tools/mock-upstream" \
	  "unit-asan::./build/unit-tests-asan" \
	  "integration-asan::$(PYTHON) tests/integration/run.py --gateway build/ssegate-asan --mock build/mock-upstream-asan"

clean:
	rm -rf build ssegate tools/mock-upstream

-include $(wildcard build/obj/*.d build/obj/*/*.d build/asan/*.d build/asan/*/*.d)
-include $(wildcard build/musl/*.d build/musl/*/*.d)

bench: ssegate tools/mock-upstream
	bench/run.sh $(BENCH_SECONDS)

# The resolver's instruction counts under callgrind (bench/dns.sh).
build/dns-bench: bench/dns_bench.c build/libssegate.a
	$(CC) $(CPPFLAGS) $(CFLAGS) -o $@ $^ $(LDLIBS)
bench-dns: build/dns-bench
	bench/dns.sh
.PHONY: bench-dns

# ---- fuzzing (libFuzzer + ASan/UBSan, clang) -------------------------------
# `make fuzz` builds every target into build/fuzz/ and runs each for
# FUZZ_SECONDS, growing build/fuzz/corpus-<name> from tests/fuzz/seeds/<name>.
# Every target runs; a crash leaves build/fuzz/crash-<name>-* and the run
# fails at the end. Logs: build/fuzz/fuzz_<name>.log.
FUZZ_SECONDS ?= 30
FUZZ_TARGETS := http_request http_response chunked sse url json jwt keys
FUZZ_TARGETS += config dns
FUZZ_FLAGS   := -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
FUZZ_SRC_http_request  := src/http/http.c src/core/wbuf.c
FUZZ_SRC_http_response := src/http/http.c src/core/wbuf.c
FUZZ_SRC_chunked       := src/http/http.c src/core/wbuf.c
FUZZ_SRC_sse           := src/gateway/sse.c src/http/http.c src/core/wbuf.c
FUZZ_SRC_url           := src/upstream/url.c
FUZZ_SRC_json          := src/gateway/json.c src/gateway/json_fast.c src/core/arena.c src/core/wbuf.c
FUZZ_SRC_jwt           := src/gateway/jwt.c src/gateway/json.c src/gateway/json_fast.c src/core/arena.c src/core/base64.c src/core/wbuf.c third_party/lib/libbearssl.a
FUZZ_SRC_keys          := src/gateway/keys.c third_party/lib/libbearssl.a
FUZZ_SRC_config        := src/upstream/cfgfile.c src/upstream/routes.c src/upstream/url.c src/core/config.c \
                          src/core/wbuf.c src/core/arena.c src/gateway/keys.c src/gateway/json.c src/gateway/json_fast.c third_party/lib/libbearssl.a
FUZZ_TARGETS += replay
FUZZ_SRC_replay        := src/gateway/replay.c src/gateway/chatstream.c src/core/base64.c src/core/wbuf.c
FUZZ_SRC_dns           := src/upstream/dns.c src/upstream/dns_conf.c
FUZZ_TARGETS += relay_head
FUZZ_SRC_relay_head    := src/gateway/relay_head.c src/gateway/limits.c src/gateway/scrub.c src/http/http.c \
                          src/upstream/url.c src/core/wbuf.c

define FUZZ_RULE
build/fuzz/fuzz_$(1): tests/fuzz/fuzz_$(1).c tests/fuzz/fuzz.h $(FUZZ_SRC_$(1)) $$(DEPS_STAMP) | build/fuzz
	$$(FUZZ_CC) $$(CPPFLAGS) -Itests/fuzz -std=c17 $$(WARN) $$(FUZZ_FLAGS) -o $$@ $$< $(FUZZ_SRC_$(1))
endef
$(foreach t,$(FUZZ_TARGETS),$(eval $(call FUZZ_RULE,$(t))))

fuzz-build: $(FUZZ_TARGETS:%=build/fuzz/fuzz_%)

fuzz: fuzz-build
	@failed=""; for t in $(FUZZ_TARGETS); do \
	  mkdir -p build/fuzz/corpus-$$t; \
	  case $$t in http_request|http_response|chunked) dict=tests/fuzz/http.dict;; *) dict=tests/fuzz/$$t.dict;; esac; \
	  printf '== fuzz_%s, %ss: ' $$t $(FUZZ_SECONDS); \
	  if build/fuzz/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -max_len=8192 -timeout=10 -print_final_stats=1 \
	       -dict=$$dict -artifact_prefix=build/fuzz/crash-$$t- build/fuzz/corpus-$$t tests/fuzz/seeds/$$t \
	       >build/fuzz/fuzz_$$t.log 2>&1; then \
	    grep -E '^stat::(number_of_executed_units|new_units_added)' build/fuzz/fuzz_$$t.log | tr -s ' ' | tr '\n' ' '; echo ok; \
	  else \
	    echo FAILED; grep -E -A3 'invariant failed|ERROR: |SUMMARY' build/fuzz/fuzz_$$t.log | head -20; \
	    grep -E 'Test unit written' build/fuzz/fuzz_$$t.log; failed="$$failed $$t"; \
	  fi; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz: failed:$$failed (logs in build/fuzz/)"; exit 1; fi
.PHONY: fuzz-build
