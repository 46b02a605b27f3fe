# Parallax Lab build.
#   make            plab (CPU; plus the CUDA backend whenever nvcc is found)
#   make test       every test (CPU); CUDA tests say "skipped" without a GPU
#   make test-cuda  CPU-vs-CUDA parity and GPU determinism (on the GPU machine)
#   make demo       trains softmax and Parallax on in-context recall (CPU)
#   make device     a build for the GPU machine: sm_90a, GSL/libyaml/SQLite static
# Switches: NO_CUDA=1, NO_OMP=1, CUDA_ARCH=sm_90a, DEVICE=1 (used by `make device`).

CC      ?= gcc
NVCC    ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
BUILD   ?= build
CFLAGS  ?= -O2 -g
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter -MMD -MP
LDLIBS  :=
ifndef NO_OMP
CFLAGS  += -fopenmp
LDLIBS  += -fopenmp
endif

ifdef DEVICE
# The GPU machine has no GSL, libyaml or cmocka: link them statically.
LIBDIR  := /usr/lib/x86_64-linux-gnu
LDLIBS  += $(LIBDIR)/libgsl.a $(LIBDIR)/libgslcblas.a $(LIBDIR)/libyaml.a $(LIBDIR)/libsqlite3.a
LDLIBS  += -lm -lpthread -ldl
else
LDLIBS  += -lgsl -lopenblas -lyaml -lsqlite3 -lm -lpthread -ldl
endif

LIB_DIRS := core kernels kernels/cpu models tasks optim train db sweeps analysis
LIB_SRC  := $(foreach d,$(LIB_DIRS),$(wildcard $(d)/*.c))
CLI_SRC  := $(wildcard cli/*.c)
OBJ32    := $(LIB_SRC:%.c=$(BUILD)/f32/%.o)
OBJ64    := $(LIB_SRC:%.c=$(BUILD)/f64/%.o)
CLI_OBJ  := $(CLI_SRC:%.c=$(BUILD)/f32/%.o)

# ---- CUDA (compiled whenever nvcc exists; tests run only on a GPU) ----------------
ifeq ($(NO_CUDA)$(EMU),)
ifneq ($(NVCC),)
HAVE_CUDA := 1
endif
endif
CUDA_ARCH ?= sm_90a
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
ifdef HAVE_CUDA
CU_SRC   := $(wildcard kernels/cuda/*.cu)
CU_OBJ   := $(CU_SRC:%.cu=$(BUILD)/cuda/%.o)
NVFLAGS  := -O3 -std=c++17 -gencode=arch=compute_$(CUDA_ARCH:sm_%=%),code=$(CUDA_ARCH) \
            -Xcompiler -fPIC -lineinfo
CFLAGS   += -DPLAB_HAVE_CUDA
CUDA_LIBS := -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublasLt -lcublas -lcudart_static -lrt -lstdc++
endif

PLAB := plab

.PHONY: all test test-cuda demo clean device devcarry bench emu emu-test
all: $(PLAB)

$(BUILD)/f32/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/f64/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -DPLAB_DOUBLE -c $< -o $@

ifndef EMU
$(BUILD)/cuda/%.o: %.cu $(wildcard kernels/cuda/*.cuh) $(wildcard kernels/*.h) core/real.h
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -c $< -o $@
else
# ---- the CUDA backend emulated on the CPU (make emu; kernels/cuda/emu, DEVICE.md) -----
# Each .cu is rewritten into C++ (launches, shared memory) and compiled by g++ against
# the shims of kernels/cuda/emu, with AddressSanitizer and UBSan on the kernel code
# (out-of-bounds reads and writes, misaligned vector loads, overflowing int indices);
# EMU_SAN= builds without them (faster; rm -rf build/emu first: flags are not tracked).
EMU_SAN  ?= -fsanitize=address,undefined -fno-sanitize=vptr -fno-sanitize-recover=all
EMU_CXXFLAGS := -O2 -g -std=c++17 -fno-strict-aliasing -Wall -Wno-unknown-pragmas \
            -Wno-unused-parameter -Wno-unused-function -Wno-unused-variable -DPLAB_EMU -DPLAB_HAVE_CUDA \
            -I kernels/cuda/emu -I kernels/cuda -include emu.h -MMD -MP $(EMU_SAN)
CU_SRC   := $(wildcard kernels/cuda/*.cu)
EMU_SRC  := $(wildcard kernels/cuda/emu/*.cpp)
CU_OBJ   := $(CU_SRC:%.cu=$(BUILD)/cuda/%.o) $(EMU_SRC:%.cpp=$(BUILD)/cuda/%.o)
CFLAGS   += -DPLAB_HAVE_CUDA
CUDA_LIBS := -lstdc++ $(EMU_SAN)

$(BUILD)/cuda/%.cpp: %.cu kernels/cuda/emu/rewrite.pl
	@mkdir -p $(dir $@)
	perl kernels/cuda/emu/rewrite.pl $< > $@.tmp && mv $@.tmp $@

$(BUILD)/cuda/%.o: $(BUILD)/cuda/%.cpp
	$(CXX) $(EMU_CXXFLAGS) -c $< -o $@

$(BUILD)/cuda/kernels/cuda/emu/%.o: kernels/cuda/emu/%.cpp
	@mkdir -p $(dir $@)
	$(CXX) $(EMU_CXXFLAGS) -c $< -o $@

# the emulator's own test: right and wrong kernels (kernels/cuda/emu/selftest.cu)
$(BUILD)/emu_selftest: $(BUILD)/cuda/kernels/cuda/emu/selftest.o $(BUILD)/cuda/kernels/cuda/emu/emu.o
	$(CXX) $^ -o $@ -lopenblas $(EMU_SAN)

.PRECIOUS: $(BUILD)/cuda/%.cpp
-include $(CU_OBJ:.o=.d) $(BUILD)/cuda/kernels/cuda/emu/selftest.d
endif

# the schema is embedded by the assembler (.incbin), which .d files do not track
$(BUILD)/f32/db/schema_sql.o $(BUILD)/f64/db/schema_sql.o: db/schema.sql

$(BUILD)/libplab.a: $(OBJ32) $(CU_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/libplab64.a: $(OBJ64)
	@rm -f $@
	ar rcs $@ $^

$(PLAB): $(CLI_OBJ) $(BUILD)/libplab.a
	$(CC) $(CLI_OBJ) $(BUILD)/libplab.a -o $@ $(LDLIBS) $(CUDA_LIBS)

# ---- tests ------------------------------------------------------------------------
# tests/test_*.c link the double-precision library (gradient checks);
# tests/f32_*.c the float one; tests/cuda_*.c the float one plus CUDA.
T64_SRC := $(wildcard tests/test_*.c)
T32_SRC := $(wildcard tests/f32_*.c)
TCU_SRC := $(wildcard tests/cuda_*.c)
T64_BIN := $(T64_SRC:tests/%.c=$(BUILD)/tests/%)
T32_BIN := $(T32_SRC:tests/%.c=$(BUILD)/tests/%)
TCU_BIN := $(TCU_SRC:tests/%.c=$(BUILD)/tests/%)
TEST_LIBS := $(LDLIBS) -lcmocka
ifdef DEVICE
# libcmocka.so.0 travels beside the test binaries
TEST_LIBS += -Wl,-rpath,'$$ORIGIN'
endif

$(BUILD)/tests/test_%: tests/test_%.c tests/testutil.c tests/testutil.h $(BUILD)/libplab64.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -DPLAB_DOUBLE $< tests/testutil.c $(BUILD)/libplab64.a -o $@ $(TEST_LIBS)

$(BUILD)/tests/f32_%: tests/f32_%.c tests/testutil.c tests/testutil.h $(BUILD)/libplab.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< tests/testutil.c $(BUILD)/libplab.a -o $@ $(TEST_LIBS) $(CUDA_LIBS)

$(BUILD)/tests/cuda_%: tests/cuda_%.c tests/testutil.c tests/testutil.h tests/cudautil.c tests/cudautil.h $(BUILD)/libplab.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< tests/testutil.c tests/cudautil.c $(BUILD)/libplab.a -o $@ $(TEST_LIBS) $(CUDA_LIBS)

# ---- benchmarks (bench/*.c: the training-step benchmark) ---------------------------------
BENCH_SRC := $(wildcard bench/*.c)
BENCH_BIN := $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)

$(BUILD)/bench/%: bench/%.c $(BUILD)/libplab.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< $(BUILD)/libplab.a -o $@ $(LDLIBS) $(CUDA_LIBS)

bench: $(BENCH_BIN)

# Everything on the CPU: the suites (CUDA ones skip without a GPU), then the CUDA suites
# again on the CPU emulation of the CUDA backend (emu-test below, docs/DEVICE.md).
test: $(PLAB) $(T64_BIN) $(T32_BIN) $(TCU_BIN)
	@PLAB=./$(PLAB) bash tests/run.sh $(T64_BIN) $(T32_BIN) $(TCU_BIN) tests/e2e_*.sh
	@echo "== the CUDA suites on the CPU emulation of the CUDA backend (make emu-test)"
	@$(MAKE) --no-print-directory -j$(shell nproc) emu-test

test-cuda: $(TCU_BIN)
	@PLAB_REQUIRE_GPU=1 bash tests/run.sh $(TCU_BIN)

demo: $(PLAB)
	bash docs/demo.sh

# For the GPU machine: cmocka comes along as a shared object beside the tests.
device:
	$(MAKE) DEVICE=1 BUILD=build/device PLAB=build/device/plab build/device/plab \
	    $(TCU_BIN:$(BUILD)/%=build/device/%) $(BENCH_BIN:$(BUILD)/%=build/device/%)
	cp -L /usr/lib/x86_64-linux-gnu/libcmocka.so.0 build/device/tests/

# The folder a device call carries (run's carry=["build/devcarry"], 64 MiB at most): the
# stripped binaries of `make device` plus cmocka in one xz tarball (each binary holds the
# whole sm_90a fatbin: about 90 MB loose, 12 MB packed). bench/run_device.sh unpacks it.
# See docs/DEVICE.md.
devcarry: device
	rm -rf build/devcarry build/devstage && mkdir -p build/devstage/tests build/devstage/bench build/devcarry
	strip -o build/devstage/plab build/device/plab
	for f in $(TCU_BIN:$(BUILD)/%=%) $(BENCH_BIN:$(BUILD)/%=%); do strip -o build/devstage/$$f build/device/$$f; done
	cp build/device/tests/libcmocka.so.0 build/devstage/tests/
	tar -C build/devstage -cJf build/devcarry/plab-device.tar.xz . && rm -rf build/devstage
	du -sh build/devcarry

# The CUDA backend emulated on the CPU, for the CUDA tests without a GPU (DEVICE.md,
# "Emulating the CUDA backend on the CPU"): build/emu/libplab.a and build/emu/tests/cuda_*.
EMU_TESTS := $(TCU_SRC:tests/%.c=build/emu/tests/%)
emu:
	$(MAKE) EMU=1 BUILD=build/emu PLAB=build/emu/plab build/emu/libplab.a build/emu/emu_selftest $(EMU_TESTS)

# the emulator's self-test first; PLAB_EMU=1 lets a test skip what says nothing about the
# GPU when emulated and takes long (it prints why)
emu-test: emu
	@build/emu/emu_selftest
	@PLAB_EMU=1 PLAB_REQUIRE_GPU=1 bash tests/run.sh $(EMU_TESTS)

clean:
	rm -rf build $(PLAB)

-include $(OBJ32:.o=.d) $(OBJ64:.o=.d) $(CLI_OBJ:.o=.d)
