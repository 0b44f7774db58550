# dp2o build. `make` builds the libtorch shim (build/libdp2otorch.so) that the
# Go package torch links; `make test` runs every Go test against it.
#
# LIBTORCH=/path selects a libtorch (the official zip, or Python's torch
# folder: python3 -c 'import torch; print(torch.__path__[0])'). Without it the
# system's libtorch-dev (Debian: /usr/include, /usr/lib/x86_64-linux-gnu) is used.

BUILD    ?= build
SHIM     := $(BUILD)/libdp2otorch.so
CXX      ?= g++
SRC      := $(wildcard torch/csrc/*.cpp)
OBJ      := $(patsubst torch/csrc/%.cpp,$(BUILD)/obj/%.o,$(SRC))
JOBS     ?= $(shell nproc)

ifdef LIBTORCH
  TORCH_INC  := -isystem $(LIBTORCH)/include -isystem $(LIBTORCH)/include/torch/csrc/api/include
  TORCH_LIB  := -L$(LIBTORCH)/lib -Wl,-rpath,$(LIBTORCH)/lib
  # The C++ ABI must match the one libtorch was built with (Python wheels of
  # torch < 2.6 use the old one). Override with TORCH_CXX11_ABI=0|1.
  TORCH_CXX11_ABI ?= $(shell python3 -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))' 2>/dev/null || echo 1)
  ABI_FLAG   := -D_GLIBCXX_USE_CXX11_ABI=$(TORCH_CXX11_ABI)
  HAS_CUDA   := $(wildcard $(LIBTORCH)/lib/libtorch_cuda.so)
else
  TORCH_INC  := -isystem /usr/include/torch/csrc/api/include
  TORCH_LIB  :=
  ABI_FLAG   :=
  HAS_CUDA   :=
endif

ifneq ($(HAS_CUDA),)
  # CUDA headers: the toolkit's, or, for a pip wheel of torch, those of the
  # nvidia-* wheels beside it, one folder each (cuda_runtime; cublas,
  # cusparse and cusolver, which ATen's CUDA context includes; nccl.h for the
  # NCCL backend of torch/csrc/dist.cpp; ...).
  CUDA_INC ?= $(wildcard /usr/local/cuda/include) $(wildcard $(LIBTORCH)/../nvidia/*/include)
  CUDA_FLAGS := -DDP2O_CUDA $(addprefix -isystem ,$(CUDA_INC))
  # --no-as-needed: nothing in the shim names a torch_cuda symbol, so without
  # it the linker drops the library and CUDA silently disappears.
  CUDA_LIBS  := -Wl,--no-as-needed -ltorch_cuda -lc10_cuda -Wl,--as-needed
endif

CXXFLAGS ?= -O2
CXXFLAGS += -std=c++17 -fPIC -Wall -Wno-unused-variable $(ABI_FLAG) $(TORCH_INC) $(CUDA_FLAGS)
LDLIBS   := $(TORCH_LIB) $(CUDA_LIBS) -Wl,--no-as-needed -ltorch -ltorch_cpu -lc10 -Wl,--as-needed

# The go command hashes only the files in a package's own folder into its
# build cache key, not the headers cgo includes from torch/csrc: after a change
# to the shim's C API (dp2o.h) it would reuse Go packages compiled against the
# old one. A define carrying the headers' hash puts them in the key.
CGO_CPPFLAGS := $(CGO_CPPFLAGS) -DDP2O_SHIM_HEADERS=$(shell cat torch/csrc/*.h | sha1sum | cut -c1-16)
export CGO_CPPFLAGS

.PHONY: all setup shim generate test test-refblas test-libtorch2 bench run fmt clean gpu-bins gpu-check

all: shim

# Install the system packages a fresh Debian machine lacks (g++, libtorch-dev).
setup:
	scripts/setup.sh

shim: $(SHIM)

# -z defs: every symbol the shim names must resolve in the libraries it links
# now, not at its first call in a user's process (a CUDA runtime function
# reached only through libtorch_cuda's own dependencies once slipped through).
$(SHIM): $(OBJ)
	$(CXX) -shared -Wl,-z,defs -o $@ $(OBJ) $(LDLIBS)

$(BUILD)/obj/%.o: torch/csrc/%.cpp $(wildcard torch/csrc/*.h)
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -c $< -o $@

# Regenerate the op wrappers from torch/ops/*.def.
generate:
	cd torch && go run ./internal/opgen .

test: $(SHIM)
	go vet ./...
	go test ./...

# The same tests on the reference BLAS (Debian's libblas3), which libtorch
# loads instead of OpenBLAS when its folder comes first on the library path:
# the suite must pass with either (tolerances, not bit-equality, wherever a
# matmul or a convolution is involved).
REFBLAS_DIR ?= /usr/lib/$(shell gcc -print-multiarch 2>/dev/null)/blas
test-refblas: $(SHIM)
	@test -f $(REFBLAS_DIR)/libblas.so.3 || { echo "no reference BLAS in $(REFBLAS_DIR) (apt-get install libblas3)"; exit 1; }
	LD_LIBRARY_PATH=$(REFBLAS_DIR)$${LD_LIBRARY_PATH:+:$$LD_LIBRARY_PATH} go test -count=1 ./...

# The same suite against libtorch 2.x (Debian trixie's 2.6, CPU) in a chroot;
# needs root. The GPU machines' torch is 2.x: its code paths are tested here.
test-libtorch2:
	scripts/test-libtorch2.sh

bench: $(SHIM)
	go test -run '^$$' -bench . -benchtime 2s ./torch/

run: $(SHIM)
	go run ./examples/sr --process_size 256 --upscale 2

fmt:
	gofmt -l -w .

clean:
	rm -rf $(BUILD)

# Test binaries for the GPU check, built here (Go is not on the GPU machine):
# one per package with tests, plus the gpucheck program, in .gpu/.
GPU_PKGS ?= $(shell go list -f '{{if .TestGoFiles}}{{.ImportPath}}{{end}}' ./... 2>/dev/null)
gpu-bins: $(SHIM)
	@mkdir -p .gpu && rm -f .gpu/*.test .gpu/*.pkg
	go build -ldflags="-s -w" -o .gpu/gpucheck ./cmd/gpucheck
	@for p in $(GPU_PKGS); do \
	  d=$${p#github.com/dp2osr/dp2o/}; n=$$(echo $$d | tr / _); \
	  go test -c -ldflags="-s -w" -o .gpu/$$n.test $$p && echo $$d > .gpu/$$n.pkg || exit 1; \
	done

# Run on the GPU machine (no Go there): builds the shim against Python's
# torch and runs the binaries of `make gpu-bins` with DP2O_DEVICE=cuda.
gpu-check:
	scripts/gpu-check.sh
