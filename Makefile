# Newcomer commands: `make test` (set up + run the tests), `make run` (set up + train + evaluate).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA_ROOT ?= $(abspath ../shared/data)
export HYBRID_DATA_ROOT ?= $(DATA_ROOT)

.PHONY: setup test run bench clean

$(VENV)/.installed: setup.cfg pyproject.toml
	@# torch's CUDA build with its libraries takes about 6.5 GB here; warn before pip dies on a full disk
	@$(PYTHON) -c "import os, shutil, sys; free = shutil.disk_usage(os.path.dirname(os.path.abspath('$(VENV)'))).free / 2**30; free < 7 and print(f'warning: {free:.1f} GiB free where $(VENV) goes; torch and its libraries need about 7 GiB. Free some space or set VENV=/a/larger/disk/venv.', file=sys.stderr)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned to the release that lies on this machine's disk (a CPU-only
	# machine elsewhere can use any torch>=2.3)
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1" || $(PY) -m pip install -q "torch>=2.3" "torchvision>=0.18"
	$(PY) -m pip install -q -e ".[test,bench]"
	touch $@

setup: $(VENV)/.installed

# two xdist workers, one test file each at a time (one torch thread each: tests/conftest.py); about 1.6x faster on 2 cores;
# files in the order tests/conftest.py gives them (the longest first)
test: setup
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

run: setup
	$(PY) -m hybrid.train --backend aer --out runs/default

bench: setup
	$(PY) -m benchmarks.qnn_throughput
	$(PY) -m benchmarks.epoch_time

clean:
	rm -rf $(VENV) runs notebooks/runs .pytest_cache
