# Two commands on a fresh machine (see README): `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= out/demo
# The same torch release everywhere; pip takes it from the local wheel cache where one exists.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
# pip byte-compiles every file it installs (about 28,000 here, over two minutes on two cores); Python compiles the
# few thousand a run imports on first use instead
PIP_INSTALL := $(BIN)/pip install -q --no-compile
# Test processes in parallel, for machines with cores to spare: `make test TEST_WORKERS=4` (pytest-xdist, each test
# file on one worker so its module fixtures are built once). Off by default: on two cores two workers overload the
# machine (Ray's 30 s raylet start-up limit was hit, a build took over 5 minutes to commit its first shard).
TEST_WORKERS ?= 0
PYTEST := $(BIN)/python -m pytest -q $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile)

.PHONY: install demo test test-fast official browser clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) $(TORCH_PINS)
	$(PIP_INSTALL) -e '.[dev]'
	# the official Grounding DINO (extra `official`) compiles against the torch above, so no build isolation;
	# installed here too so that its backend is tested
	$(PIP_INSTALL) --no-build-isolation 'groundingdino-py>=0.4'
	touch $@

# The main job on the embedded default: the tiny preset into a local folder, on a local Ray with Prefect's local
# mode (a rerun resumes: it only does what is missing), then a health check and a preview grid of the result.
demo: install
	$(BIN)/magicseg build --preset tiny --out $(DEMO_OUT)
	$(BIN)/magicseg inspect $(DEMO_OUT)
	$(BIN)/magicseg preview $(DEMO_OUT) --out $(DEMO_OUT)/preview.png

# The whole suite, slow tests included (CI runs exactly this). `browser` gives the Prefect UI check its headless
# Chromium (Debian's package) where apt can install it; without one, only that screenshot step is skipped.
test: install browser
	$(PYTEST)

# Everything but the tests marked slow: the inner loop while developing.
test-fast: install
	$(PYTEST) -m "not slow"

browser:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		chromium >/dev/null; } || echo "no chromium: the Prefect UI screenshot test will be skipped"

# groundingdino-py compiles an extension against the installed torch, so it must see it (no build isolation).
official: install
	$(PIP_INSTALL) --no-build-isolation 'groundingdino-py>=0.4'

clean:
	rm -rf $(VENV) out .pytest_cache .hypothesis
