# The two commands a new user needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | cksum | cut -d' ' -f1)

.PHONY: install data run test bench bench-train bench-inference bench-preprocess bench-serve bench-concurrency bench-load bench-scale bench-profile samples clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

# MNIST from the offline-safe sources, verified by sha256; a no-op once the files are there.
data: install
	$(PY) manage.py fetch_mnist

run: install
	$(PY) scripts/run_local.py

# Two test processes (pytest-xdist) by default: half the suite waits on real workers, servers and clocks, which the
# other process fills. TEST_PROCESSES=0 runs it in this process alone.
TEST_PROCESSES ?= 2
test: data
	$(PY) -m pytest -n $(TEST_PROCESSES)

bench: bench-train bench-inference bench-preprocess bench-serve bench-concurrency bench-load bench-scale

bench-train: data
	$(PY) benchmarks/bench_train.py

bench-inference: data
	$(PY) benchmarks/bench_inference.py

# ARGS="--checkpoint FILE" adds the model's accuracy in each scene.
bench-preprocess: data
	$(PY) benchmarks/bench_preprocess.py $(ARGS)

bench-serve: data
	$(PY) benchmarks/bench_serve.py

bench-concurrency: data
	$(PY) benchmarks/bench_concurrency.py

bench-load: data
	$(PY) benchmarks/bench_load.py

# ARGS="--uploads N" for another size than a million.
bench-scale: install
	$(PY) benchmarks/bench_scale.py $(ARGS)

# Not part of `bench`: a diagnosis of where bench-serve's CPU goes, not a measurement. Single images by
# default; ARGS="--per-request 32 --rounds 20" for batches.
bench-profile: data
	$(PY) benchmarks/profile_serve.py $(ARGS)

samples: data
	$(PY) manage.py extract_mnist_samples
	$(PY) scripts/generate_other_samples.py --out media/samples/other

# Everything in var/ but the demo account's random password, which `make run` prints from there alone.
clean:
	find var -mindepth 1 -maxdepth 1 ! -name demo-password -exec rm -rf {} + 2>/dev/null || true
	rm -rf test-artifacts .pytest_cache
