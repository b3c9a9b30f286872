# Set-up and entry points. `make pipeline` and `make test` are all a fresh machine needs (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
export NO_ALBUMENTATIONS_UPDATE := 1
export MPLBACKEND := Agg
export PATH := $(BIN):$(PATH)

.PHONY: pipeline test lint bench fashion-mnist fashion-voc clean-venv gpu-check tracking-server tracking-server-stop

# pip byte-compiles what it installs one file at a time; compileall does it on every core. Files that do not
# compile under this Python (a package's tests for a newer one) are skipped silently, as pip skips them; the
# packages' own test suites (tests/ and test/ folders, a fifth of the files) are left out: nothing runs them.
COMPILE := $(BIN)/python -c "import compileall, re, sys; compileall.compile_dir(sys.argv[1], quiet=2, \
	workers=0, rx=re.compile('/tests?/'))"

$(VENV)/.pipeline: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q --no-compile -e '.[pipeline]'
	$(COMPILE) $(VENV)/lib
	touch $@

$(VENV)/.test: pyproject.toml $(VENV)/.pipeline
	$(BIN)/pip install -q --no-compile -e '.[test,parity]'
	$(COMPILE) $(VENV)/lib
	touch $@

## Run the whole DVC pipeline on the offline default data.
pipeline: $(VENV)/.pipeline
	$(BIN)/dvc config --local core.analytics false
	$(BIN)/dvc repro

## Real data: DeepConvNet on Fashion-MNIST, from Debian's dataset-fashion-mnist (used in place), with BatchNorm
## and a mirrored copy of every training photograph (the recipe that meets 0.93, README "Real data").
FASHION_MNIST := /usr/share/datasets/fashion-mnist
FASHION_MNIST_TRANSFORMS := [{name:HorizontalFlip,p:1.0},{name:Affine,translate_px:[-2,2],p:0.5},{name:Standardize,scope:dataset}]
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
fashion-mnist: $(VENV)/.pipeline
	test -f $(FASHION_MNIST)/train-images-idx3-ubyte.gz || $(SUDO) apt-get install -y dataset-fashion-mnist
	$(BIN)/dvc config --local core.analytics false
	$(BIN)/dvc exp run -n fashion-mnist -S download.classification.dataset=fashion-mnist \
	    -S download.classification.root=$(FASHION_MNIST) \
	    -S 'augment.classification.transforms=$(FASHION_MNIST_TRANSFORMS)' -S augment.classification.copies=1 \
	    -S '+train.classification.model_args.batch_norm=true' -S train.classification.epochs=10 \
	    evaluate@classification

## Real photographs in the VOC layout: every Fashion-MNIST photograph composed into VOC2012-style scenes by
## tools/fashion_voc.py, then the detector and the FCN trained on them through the pipeline (README, "Real data").
FASHION_VOC := $(HOME)/.cache/xpvision/fashion-voc
FASHION_VOC_CLASSES := [tshirt,trouser,pullover,dress,coat,sandal,shirt,sneaker,bag,ankleboot]
fashion-voc: $(VENV)/.pipeline
	test -f $(FASHION_MNIST)/train-images-idx3-ubyte.gz || $(SUDO) apt-get install -y dataset-fashion-mnist
	test -d $(FASHION_VOC)/VOCdevkit/VOC2012 || $(BIN)/python tools/fashion_voc.py --source $(FASHION_MNIST) \
	    --out $(FASHION_VOC)
	$(BIN)/dvc config --local core.analytics false
	$(BIN)/dvc exp run -n fashion-voc-detection -S download.detection.dataset=voc2012 \
	    -S download.detection.root=$(FASHION_VOC) -S 'download.detection.voc_classes=$(FASHION_VOC_CLASSES)' \
	    -S train.detection.epochs=2 evaluate@detection
	$(BIN)/dvc exp run -n fashion-voc-segmentation -S download.segmentation.dataset=voc2012 \
	    -S download.segmentation.root=$(FASHION_VOC) \
	    -S 'download.segmentation.voc_classes=$(FASHION_VOC_CLASSES)' \
	    -S download.segmentation.max_images=8000 -S train.segmentation.epochs=2 evaluate@segmentation

## Lint and run the test suite (PyTorch / pycocotools parity tests included).
test: $(VENV)/.test lint
	$(BIN)/pytest

lint: $(VENV)/.test
	$(BIN)/ruff check src tests bench tools

## Benchmarks against PyTorch on this machine (not part of the tests).
bench: $(VENV)/.test
	$(BIN)/python bench/bench_convnet.py
	$(BIN)/python bench/bench_convnet.py --processes 2

## The team's MLflow server: PostgreSQL + `mlflow server` on 127.0.0.1 (scripts/tracking-server documents it).
tracking-server: $(VENV)/.pipeline
	$(BIN)/pip install -q -e '.[team]'
	scripts/tracking-server start

tracking-server-stop:
	scripts/tracking-server stop

clean-venv:
	rm -rf $(VENV)

## On a machine with a CUDA GPU (no network needed): GPU tests, short GPU trainings, GPU benchmark, sanitizer.
gpu-check:
	PYTHONPATH=src$(if $(PYTHONPATH),:$(PYTHONPATH)) $(PYTHON) tools/gpu_check.py $(if $(REPORT),--report $(REPORT))
