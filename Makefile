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
              python3 clang libclang-rt-14-dev

ENGINE_SRC := $(shell find engine -name '*.c' ! -path 'engine/cli/*' \
                ! -path 'engine/backend/cuda/*' | sort)
CLI_SRC    := $(shell find engine/cli -name '*.c' | sort)
UNIT_SRC   := $(shell find t/unit -name '*.c' 2>/dev/null | sort)
BENCH_SRC  := $(shell find bench -name '*.c' 2>/dev/null | sort)
CUDA_C_SRC := $(shell find engine/backend/cuda -name '*.c' 2>/dev/null | sort)
CUDA_CU_SRC:= $(shell find kernels -name '*.cu' 2>/dev/null | sort)

ENGINE_OBJ := $(ENGINE_SRC:%.c=$(BUILD)/obj/%.o)
CLI_OBJ    := $(CLI_SRC:%.c=$(BUILD)/obj/%.o)
UNIT_BIN   := $(UNIT_SRC:t/unit/%.c=$(BUILD)/t/%)

ifneq ($(NVCC),)
CUDA_HOME  ?= $(patsubst %/bin/nvcc,%,$(NVCC))
CUDA_OBJ   := $(CUDA_C_SRC:%.c=$(BUILD)/obj/%.o) $(CUDA_CU_SRC:%.cu=$(BUILD)/obj/%.o)
CUDA_LIBS  := -L$(CUDA_HOME)/lib64 -L$(CUDA_HOME)/targets/x86_64-linux/lib \
              -lcublasLt -lcublas -lcudart
NVCCFLAGS  ?= -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -lineinfo \
              -Xcompiler -fPIC,-Wall --expt-relaxed-constexpr
CFLAGS     += -DKIMI_HAVE_CUDA -I$(CUDA_HOME)/include
endif

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

$(NGX_BUILD)/Makefile: config
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

bench: $(BUILD)/kimi-bench

$(BUILD)/kimi-bench: $(BENCH_SRC) $(BUILD)/libkimi.a
	@mkdir -p $(BUILD)
	$(if $(BENCH_SRC),$(CC) $(CFLAGS) -Iengine -o $@ $(BENCH_SRC) \
	    $(BUILD)/libkimi.a $(LDLIBS) $(if $(NVCC),$(CUDA_LIBS) -lstdc++),@true)

run: SHELL := /bin/bash
run: deps
	@$(MAKE) --no-print-directory -j$(JOBS) engine module
	@PORT=$(PORT) MODEL=$(MODEL) BUILD=$(BUILD) ./t/lib/serve

test: deps
	@$(MAKE) --no-print-directory -j$(JOBS) all
	@BUILD=$(BUILD) prove -j2 --timer $(BUILD)/t/ t/*.t

gpu:
	./t/gpu/run

clean:
	rm -rf $(BUILD)

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
