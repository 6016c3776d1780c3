# Two commands do all set-up on a fresh machine: `make verify-all` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch lies on this machine's disk; an unpinned torch would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0
PADDLE_EXTRA ?= cpu
# every extra: both frameworks (Paddle's CPU wheel, or with PADDLE_EXTRA=gpu its CUDA one)
VERIFY_EXTRA := $(if $(filter gpu,$(PADDLE_EXTRA)),verify-gpu,verify)

.PHONY: install test test-fast verify-all bench fuzz clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile tests/oracles-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[$(VERIFY_EXTRA),dev,oracles,export]"
	# oracles whose declared dependencies would replace the CPU torch or clash with Paddle 3: exact locks
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -r tests/oracles-nodeps.txt
	# paddleclip's package is named `clip`, as openai-clip's is: installed apart, its model file loaded by path
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --target $(VENV)/oracles/paddleclip paddleclip==1.0.0
	touch $@

# two pytest-xdist workers, one thread each (times: reports/measurements.md); a test module's tests, or one
# model's, stay on one worker (tests/conftest.py). TEST_WORKERS=0: one process. PYTEST_ARGS: more options
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope $(PYTEST_ARGS)

test: install
	$(PYTEST)

test-fast: install
	$(PYTEST) -m "not slow"

verify-all: install
	$(VENV)/bin/parity verify-all --report-dir reports

bench: install
	$(PY) benchmarks/bench.py --report-dir reports

# every reader under atheris, FUZZ_SECONDS each, two at a time; writes reports/fuzz.md
FUZZ_SECONDS ?= 300
fuzz: install
	$(PY) fuzz/run.py --seconds $(FUZZ_SECONDS) --report-dir reports

clean:
	rm -rf $(VENV) .cache .pytest_cache *.egg-info
