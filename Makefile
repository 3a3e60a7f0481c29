# Every target runs in the project's virtualenv: the active one, else .venv/ (made by `make install`).
# OpenMP threads sleep instead of spinning while they wait: with spinning, torch threads that share
# 2 cores with dataloader workers or other jobs run 10-30x slower.
export OMP_WAIT_POLICY ?= PASSIVE
VENV ?= $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV),.venv)
PY := $(VENV)/bin/python
STAMP := $(VENV)/.adperception-installed

# SynthDrive for the quickstart: 256×512, the default resolution of the generator.
DATA ?= data/synthdrive
TRAIN_SAMPLES ?= 400
VAL_SAMPLES ?= 100
SEED ?= 0
OUT ?= outputs/quickstart

.PHONY: install quickstart data preview test lint format benchmark-synth clean

install: $(STAMP)

# Re-runs when the pins or the install step change; tools/install.sh is idempotent anyway.
$(STAMP): setup.cfg pyproject.toml tools/install.sh
	bash tools/install.sh
	touch $@

# Train the quickstart config on SynthDrive, draw its gradient diagnostics, evaluate it, draw
# targets above predictions, export it (safetensors + ONNX) and draw the exported model's
# predictions.
quickstart: preview
	$(PY) tools/train.py configs/quickstart.py --work-dir $(OUT)/train
	$(PY) tools/analyze_logs.py $(OUT)/train --out-dir $(OUT)/diagnostics
	$(PY) tools/test.py configs/quickstart.py "$$(cat $(OUT)/train/last_checkpoint)" --work-dir $(OUT)/test \
		--out $(OUT)/metrics.json --show-dir $(OUT)/predictions
	$(PY) tools/export.py configs/quickstart.py "$$(cat $(OUT)/train/last_checkpoint)" \
		--format onnx --out $(OUT)/export
	$(PY) tools/infer.py $(OUT)/export $(DATA)/leftImg8bit/val/synthdrive/synthdrive_00000[0-3]_000019_leftImg8bit.png \
		--onnx --out-dir $(OUT)/infer
	@echo "quickstart: metrics in $(OUT)/metrics.json, gradient diagnostics in $(OUT)/diagnostics,"
	@echo "            targets over predictions in $(OUT)/predictions,"
	@echo "            exported model in $(OUT)/export, its ONNX predictions drawn in $(OUT)/infer"

data: $(DATA)/.complete

# Re-run when the generator changes: it writes only what a tree lacks (a new task's files).
$(DATA)/.complete: $(STAMP) $(wildcard adperception/data/synth/*.py)
	$(PY) tools/make_synthetic.py --out $(DATA) --train $(TRAIN_SAMPLES) --val $(VAL_SAMPLES) --seed $(SEED)
	$(PY) tools/check_dataset.py $(DATA)
	touch $@

preview: data
	$(PY) tools/browse_dataset.py $(DATA) --split val --num 4 --out-dir $(OUT)/preview

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

benchmark-synth: $(STAMP)
	$(PY) tools/benchmark.py synth --json $(OUT)/benchmark_synth.json

clean:
	rm -rf $(OUT) $(DATA)
