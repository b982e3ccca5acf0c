# kimi-nginx: build, run and test.
#
#   make run     install what is missing, build, serve the OpenAI API on
#                127.0.0.1:$(PORT) (nginx + kimi-engine, foreground)
#   make test    install what is missing, build, run every test
#
# Sources are found by folder: every engine/**/*.c goes into libkimi.a
# (engine/cli/ is the kimi-engine binary, engine/backend/cuda/ and kernels/
# only when nvcc is present), every t/unit/*.c is a TAP test binary.

PORT       ?= 8000
MODEL      ?=
BUILD      ?= build
CC         ?= cc
NVCC       ?= $(shell command -v nvcc 2>/dev/null)
JOBS       ?= $(shell nproc)

CFLAGS_BASE := -std=c11 -D_GNU_SOURCE -O2 -g -pthread -fPIC \
               -Wall -Wextra -Wno-unused-parameter -Werror=implicit-function-declaration
CFLAGS     ?= $(CFLAGS_BASE)
LDLIBS     := -ljansson -lpcre2-8 -lm -pthread -ldl

APT_PKGS   := nginx nginx-dev libjansson-dev libpcre2-dev perl wrk gnuplot-nox \
              python3 python3-numpy clang libclang-rt-14-dev curl openssl

ENGINE_SRC := $(shell find engine -name '*.c' ! -path 'engine/cli/*' \
                ! -path 'engine/backend/cuda/*' | sort)
CLI_SRC    := $(shell find engine/cli -name '*.c' | sort)
UNIT_SRC   := $(shell find t/unit -name '*.c' 2>/dev/null | sort)
BENCH_SRC  := $(sort $(wildcard bench/*.c))
CUDA_C_SRC := $(shell find engine/backend/cuda -name '*.c' 2>/dev/null | sort)
CUDA_CU_SRC:= $(shell find kernels engine/parallel -name '*.cu' 2>/dev/null | sort)

ENGINE_OBJ := $(ENGINE_SRC:%.c=$(BUILD)/obj/%.o)
CLI_OBJ    := $(CLI_SRC:%.c=$(BUILD)/obj/%.o)
UNIT_BIN   := $(UNIT_SRC:t/unit/%.c=$(BUILD)/t/%)

ifneq ($(NVCC),)
CUDA_HOME  ?= $(patsubst %/bin/nvcc,%,$(NVCC))
CUDA_OBJ   := $(CUDA_C_SRC:%.c=$(BUILD)/obj/%.o) $(CUDA_CU_SRC:%.cu=$(BUILD)/obj/%.o)
CUDA_LIBS  := -L$(CUDA_HOME)/lib64 -L$(CUDA_HOME)/targets/x86_64-linux/lib \
              -lcublasLt -lcublas -lcudart -lnccl
NVCCFLAGS  ?= -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -lineinfo \
              -Xcompiler -fPIC,-Wall --expt-relaxed-constexpr
CFLAGS     += -DKIMI_HAVE_CUDA -I$(CUDA_HOME)/include
# the backend factory links the cuda backend only once its sources exist
CFLAGS     += $(if $(CUDA_C_SRC),-DKIMI_HAVE_CUDA_BACKEND)
$(BUILD)/obj/engine/backend/backend.o: $(CUDA_C_SRC)
endif

.DEFAULT_GOAL := all
.PHONY: all engine module unit bench deps run test clean gpu

all: engine module unit bench

deps:
	@missing=""; for p in $(APT_PKGS); do \
	    dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	        apt-get install -y -qq $$missing >/dev/null; fi

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/obj/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

$(BUILD)/libkimi.a: $(ENGINE_OBJ) $(CUDA_OBJ)
	@rm -f $@
	ar rcs $@ $^

engine: $(BUILD)/kimi-engine

$(BUILD)/kimi-engine: $(CLI_OBJ) $(BUILD)/libkimi.a
	$(CC) $(CFLAGS) -o $@ $(CLI_OBJ) $(BUILD)/libkimi.a $(LDLIBS) \
	    $(if $(NVCC),$(CUDA_LIBS) -lstdc++)

# The nginx module, out of tree against Debian's nginx-dev sources with the
# distribution's own configure flags, so the .so loads into Debian's nginx.
NGX_SRC    := /usr/share/nginx/src
NGX_BUILD  := $(BUILD)/nginx
MODULE_SO  := $(NGX_BUILD)/objs/ngx_http_kimi_module.so
MODULE_DEPS:= config $(wildcard ngx_http_kimi_module/*.c ngx_http_kimi_module/*.h) \
              $(shell find engine/common engine/shm engine/text -name '*.[ch]')

module: $(MODULE_SO)

# configure globs the module's sources: re-run it when that list changes
NGX_SRC_LIST := $(BUILD)/nginx-sources.list
NGX_SRC_NOW  := $(sort $(wildcard ngx_http_kimi_module/*.[ch] engine/common/*.[ch] \
                engine/shm/*.[ch] engine/text/*.[ch]))
$(shell mkdir -p $(BUILD); echo '$(NGX_SRC_NOW)' | cmp -s - $(NGX_SRC_LIST) \
    || echo '$(NGX_SRC_NOW)' > $(NGX_SRC_LIST))

$(NGX_BUILD)/Makefile: SHELL := /bin/bash
$(NGX_BUILD)/Makefile: config $(NGX_SRC_LIST)
	@rm -rf $(NGX_BUILD) && mkdir -p $(BUILD) && cp -r $(NGX_SRC) $(NGX_BUILD)
	cd $(NGX_BUILD) && . ./conf_flags && \
	    ./configure "$${NGX_CONF_FLAGS[@]}" --add-dynamic-module=$(CURDIR) >configure.log

$(MODULE_SO): $(NGX_BUILD)/Makefile $(MODULE_DEPS)
	$(MAKE) -C $(NGX_BUILD) -f objs/Makefile modules -j$(JOBS)

unit: $(UNIT_BIN)

$(BUILD)/t/%: t/unit/%.c $(BUILD)/libkimi.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Iengine -o $@ $< $(BUILD)/libkimi.a $(LDLIBS) \
	    $(if $(NVCC),$(CUDA_LIBS) -lstdc++)

# the bench_* tests compile the bench/ file they check into themselves
$(filter $(BUILD)/t/bench_%,$(UNIT_BIN)): $(BENCH_SRC) $(wildcard bench/*.h)

bench: $(BUILD)/kimi-bench

$(BUILD)/kimi-bench: $(BENCH_SRC) $(wildcard bench/*.h) $(BUILD)/libkimi.a
	@mkdir -p $(BUILD)
	$(if $(BENCH_SRC),$(CC) $(CFLAGS) -Iengine -o $@ $(BENCH_SRC) \
	    $(BUILD)/libkimi.a $(LDLIBS) $(if $(NVCC),$(CUDA_LIBS) -lstdc++),@true)

# The default model: tiny Kimi-K2 (random weights, real tokenizer files from
# KIMI_TOKENIZER_DIR); its text is noise.  `make run` serves it when MODEL=''.
TINY_MODEL         ?= $(BUILD)/tiny-kimi-k2
KIMI_TOKENIZER_DIR ?= ../shared/kimi-k2

.PHONY: tiny-model
tiny-model: $(TINY_MODEL)/config.json

$(TINY_MODEL)/config.json: $(BUILD)/kimi-engine
	$(BUILD)/kimi-engine gen-tiny-model --out $(TINY_MODEL) \
	    --tokenizer-dir $(KIMI_TOKENIZER_DIR)

run: SHELL := /bin/bash
run: deps
	@$(MAKE) --no-print-directory -j$(JOBS) engine module $(if $(MODEL),,tiny-model)
	@PORT=$(PORT) MODEL=$(MODEL) BUILD=$(BUILD) ./t/lib/serve

test: deps fuzz-short
	@$(MAKE) --no-print-directory -j$(JOBS) all
	@# the unit binaries by name: given a directory, prove only looks for *.t
	@BUILD=$(BUILD) prove -j2 --timer $(UNIT_BIN) t/*.t

# A few seconds of libFuzzer per text-layer target (t/fuzz/run; skipped
# with a message when clang's libFuzzer is missing).
.PHONY: fuzz-short
fuzz-short: deps
	@BUILD=$(BUILD) ./t/fuzz/run

gpu:
	./t/gpu/run

# Installation, the usual way: `make install PREFIX=/usr DESTDIR=/tmp/pkg`.
# The module goes where Debian's nginx loads modules from, whatever PREFIX.
PREFIX          ?= /usr/local
DESTDIR         ?=
NGX_MODULES_DIR ?= /usr/lib/nginx/modules
SYSTEMD_DIR     ?= /lib/systemd/system
DEB_PKGS        := debhelper dpkg-dev fakeroot

.PHONY: install install-engine install-module deb

install: install-engine install-module

install-engine: engine
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(SYSTEMD_DIR) \
	    $(DESTDIR)/etc/default
	install -m 0755 $(BUILD)/kimi-engine $(DESTDIR)$(PREFIX)/bin/
	sed 's|/usr/bin/kimi-engine|$(PREFIX)/bin/kimi-engine|' \
	    conf/systemd/kimi-engine.service \
	    > $(DESTDIR)$(SYSTEMD_DIR)/kimi-engine.service
	chmod 0644 $(DESTDIR)$(SYSTEMD_DIR)/kimi-engine.service
	@# an operator's edited defaults survive a reinstall
	test -e $(DESTDIR)/etc/default/kimi-engine || install -m 0644 \
	    conf/systemd/kimi-engine.default $(DESTDIR)/etc/default/kimi-engine

install-module: module
	install -d $(DESTDIR)$(NGX_MODULES_DIR) \
	    $(DESTDIR)$(PREFIX)/share/doc/kimi-nginx/examples
	install -m 0644 $(MODULE_SO) $(DESTDIR)$(NGX_MODULES_DIR)/
	install -m 0644 $(wildcard conf/*.conf) README.md \
	    $(DESTDIR)$(PREFIX)/share/doc/kimi-nginx/examples/

# Debian packages (libnginx-mod-http-kimi, kimi-engine) into ../; optional,
# never part of `make test`.
deb:
	@missing=""; for p in $(DEB_PKGS); do \
	    dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	        apt-get install -y -qq $$missing >/dev/null; fi
	dpkg-buildpackage -us -uc -b

clean:
	rm -rf $(BUILD)

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
