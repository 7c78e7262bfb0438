# The two commands a new user needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt | cksum | cut -d' ' -f1)

.PHONY: install data run test bench bench-train bench-inference bench-serve bench-concurrency bench-load samples clean

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

# MNIST from the offline-safe sources, verified by sha256; a no-op once the files are there.
data: install
	$(PY) manage.py fetch_mnist

run: install
	$(PY) scripts/run_local.py

test: data
	$(PY) -m pytest

bench: bench-train bench-inference bench-serve bench-concurrency bench-load

bench-train: data
	$(PY) benchmarks/bench_train.py

bench-inference: data
	$(PY) benchmarks/bench_inference.py

bench-serve: data
	$(PY) benchmarks/bench_serve.py

bench-concurrency: data
	$(PY) benchmarks/bench_concurrency.py

bench-load: data
	$(PY) benchmarks/bench_load.py

samples: install
	$(PY) manage.py extract_mnist_samples
	$(PY) scripts/generate_other_samples.py --out media/samples/other

clean:
	rm -rf var test-artifacts .pytest_cache
