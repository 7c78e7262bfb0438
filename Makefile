# The two commands a new user needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt | cksum | cut -d' ' -f1)

.PHONY: install run test test-sqlite bench bench-train bench-serve bench-load samples clean

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

run: install
	$(PY) scripts/run_local.py

test: install
	$(PY) -m pytest

bench: bench-train bench-serve bench-load

bench-train: install
	$(PY) benchmarks/bench_train.py

bench-serve: install
	$(PY) benchmarks/bench_serve.py

bench-load: install
	$(PY) benchmarks/bench_load.py

samples: install
	$(PY) manage.py extract_mnist_samples
	$(PY) scripts/generate_other_samples.py --out media/samples/other

clean:
	rm -rf var test-artifacts .pytest_cache
