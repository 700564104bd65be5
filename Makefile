# Two commands for a new user: `make demo` and `make test`. Both create .venv if missing
# and install repas with the pinned set in constraints.txt.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.repas-installed
# Two cores are easily oversubscribed: idle OpenMP threads must sleep, not spin.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install data demo demo-sr test lint clean

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[deploy,mobile,sr,baselines,dev]"
	touch $(STAMP)

install: $(STAMP)

# Fashion-MNIST from the Debian package dataset-fashion-mnist (installed when apt-get can).
data: install
	$(PY) -m repas data

demo: data
	$(PY) -m repas pipeline --config configs/fmnist.yaml

# Super-resolution x2 on the packaged photographs (about 16 minutes on 2 cores; configs/sr_x2_plain.yaml, 30 minutes of training, scores higher).
demo-sr: install
	$(PY) -m repas pipeline --config configs/sr_x2.yaml

# Two pytest-xdist workers, one thread each (tests/conftest.py): most tests wait on
# subprocesses and single-thread runtimes, so two in parallel take 0.6x the time of one.
# A module's tests stay on one worker (loadfile), so its fixtures are built once.
TEST_WORKERS ?= 2

# The data steps are tried so that the tests on the real data run; they skip cleanly
# (and say why) where the packages cannot be installed.
test: install
	-$(PY) -m repas data
	-$(PY) -m repas data --set data.name=sr-photos
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile
	$(PY) -m ruff check repas tests scripts

lint: install
	$(PY) -m ruff check repas tests scripts

clean:
	rm -rf runs .pytest_cache
