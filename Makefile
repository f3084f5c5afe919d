# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv when missing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
OUT     ?= out

.PHONY: demo test test-gpu venv clean train

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch 2.13.0 lies on this machine's disk; install it first so that nothing
	# below pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q "triton==3.6.0"
	$(BIN)/pip install -q -e ".[test]"
	# Test-only NVFP4 references (bit-exactness oracles); ModelOpt imports omegaconf and pulp.
	$(BIN)/pip install -q --no-deps torchao==0.18.0 nvidia-modelopt==0.47.0 omegaconf==2.4.0 pulp==3.3.2
	touch $(STAMP)

venv: $(STAMP)

# The main job on the built-in model: quantize with the default recipe, then generate a video.
demo: $(STAMP)
	$(BIN)/dq quantize --recipe tiny_w4a4.yaml --out $(OUT)/dq-tiny-w4a4.safetensors
	$(BIN)/dq generate --checkpoint $(OUT)/dq-tiny-w4a4.safetensors \
		--prompt "a red circle moving right on a blue background" --out $(OUT)/demo.mp4

# Everything but the GPU tests; slow ones included (the whole run stays well under 20 minutes).
test: $(STAMP)
	TRITON_INTERPRET=1 $(BIN)/python -P -m pytest -m "not gpu" -q

test-gpu: $(STAMP)
	$(BIN)/python -P -m pytest -m gpu -q

# Train dq-tiny (on a GPU): one time-boxed session on TRAIN_GPUS GPUs (data-parallel under torchrun)
# that resumes from runs/dq-tiny, then export the EMA weights, model card and loss curve into the
# package. On a machine with torch already installed: `make train TRAIN_PY=python3`.
TRAIN_PY ?= $(BIN)/python
TRAIN_MINUTES ?= 9
TRAIN_GPUS ?= 1
TRAIN_STEPS ?= 11000
# -P (PYTHONSAFEPATH for torchrun's processes) keeps the repo root off sys.path: its kernels/ folder
# would shadow the PyPI `kernels` package that transformers probes for.
train:
	PYTHONSAFEPATH=1 $(TRAIN_PY) -P -m torch.distributed.run --standalone --nproc-per-node $(TRAIN_GPUS) \
		-m dq_cli.tiny.train --state runs/dq-tiny --minutes $(TRAIN_MINUTES) --total-steps $(TRAIN_STEPS) \
		--init dq_cli/tiny/weights
	$(TRAIN_PY) -P -m dq_cli.tiny.train --state runs/dq-tiny --export dq_cli/tiny/weights

clean:
	rm -rf $(OUT) .pytest_cache
