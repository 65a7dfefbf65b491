# One venv per checkout. CPU installs pin torch through constraints-cpu.txt; on a GPU machine run
# `make install CONSTRAINTS=` inside an env that already has your CUDA torch.
PY ?= python3
VENV ?= .venv
CONSTRAINTS ?= constraints-cpu.txt
PIP = $(VENV)/bin/pip
BIN = $(VENV)/bin
# DeepSpeed JIT-compiles a small CPU comm op on first use; keep it in the checkout so it is built once.
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions

.PHONY: install browser test demo bench clean

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e '.[dev]'
	touch $@

# DeepSpeed JIT-compiles its shared-memory comm op with g++ (≈ 35 s on 2 cores) at the first init_distributed
# on a CPU machine. Build it here, through the same DeepSpeed function, so no test or first run pays for it
# (a test's subprocess timeout once ran out during that build). Where the accelerator has no such op (CUDA)
# build_shm_op returns None and this builds nothing.
$(TORCH_EXTENSIONS_DIR)/.shm_comm_built: $(VENV)/.installed
	$(BIN)/python -c "from deepspeed.comm.torch import build_shm_op; build_shm_op()"
	mkdir -p $(@D) && touch $@

install: $(VENV)/.installed $(TORCH_EXTENSIONS_DIR)/.shm_comm_built

# tests/test_serve.py drives a real browser: Debian's Chromium through Playwright (Playwright's own browser
# download is not reachable from CI). Installed here when missing and apt-get may (root, as in CI); elsewhere
# that test skips, saying so, except under CI=true, where it fails.
CHROMIUM ?= /usr/bin/chromium
browser:
	@if [ ! -x $(CHROMIUM) ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; fi

test: install browser
	OMP_NUM_THREADS=1 $(BIN)/pytest -q -n 2 --dist loadfile

demo: install
	$(BIN)/r2g demo --out demo

clean:
	rm -rf $(VENV) .cache demo
