# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU build of torch by default; `make TORCH_CONSTRAINT= install` keeps a CUDA torch you installed.
TORCH_CONSTRAINT ?= -c constraints/cpu.txt
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint bench zoo mutate clean

$(STAMP): pyproject.toml setup.cfg constraints/cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet $(TORCH_CONSTRAINT) -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The CLI demo (audit report), then napari: the viewer with the docks where there is a screen,
# else the scripted tour under Xvfb (screenshots of each step in demo_output/).
demo: $(STAMP)
	$(BIN)/fairseg demo --out demo_output
	@if [ -n "$$DISPLAY" ]; then $(BIN)/python -m napari_fairseg._napari.tour --out demo_output/tour; \
	elif command -v xvfb-run >/dev/null; then xvfb-run -a $(BIN)/python -m napari_fairseg._napari.tour --tour --out demo_output/tour; \
	else echo "no screen and no xvfb-run: skipped the napari tour (apt-get install xvfb)"; fi

lint: $(STAMP)
	$(BIN)/ruff check napari_fairseg tests benchmarks
	$(BIN)/lint-imports

test: $(STAMP) lint
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_metrics.py
	$(BIN)/python benchmarks/bench_engine.py
	$(BIN)/python benchmarks/bench_round.py
	xvfb-run -a $(BIN)/python benchmarks/bench_gui.py

# Mutation testing (mutmut, configured in pyproject.toml) of the modules whose numbers are the
# product; not in CI (its time is in the README). Kill rates per module follow.
# One module: make mutate MUTANTS='napari_fairseg.metrics.groups*'
MUTANTS ?=
mutate: $(STAMP)
	$(BIN)/python -m pip install --quiet "mutmut==3.8.1"
	rm -rf mutants
	FAIRSEG_MUTATION=1 OMP_NUM_THREADS=1 $(BIN)/mutmut run --max-children 2 $(MUTANTS)
	$(BIN)/python benchmarks/mutation_report.py

# Rebuild the bundled checkpoints (napari_fairseg/models/bundled/README.md). The brain model
# learns from 64×64×48 crops around the caudate and from patches of whole heads, so it works on both.
ZOO := napari_fairseg/models/bundled
ZOO_EPOCHS ?= 200
zoo: $(STAMP)
	rm -rf build/zoo
	$(BIN)/fairseg --quiet sample brain --out build/zoo/brain
	$(BIN)/fairseg --quiet sample brain --field whole --out build/zoo/head
	$(BIN)/python -c "from napari_fairseg.data.manifest import merge_cohorts as m, read_manifest as r, write_manifest as w; \
	    w(m([r('build/zoo/brain/manifest.csv'), r('build/zoo/head/manifest.csv')], name='brain-zoo'), 'build/zoo/brain-zoo.csv')"
	$(BIN)/fairseg --quiet train build/zoo/brain-zoo.csv --out build/zoo/brain-light-unet.pt \
	    --network light_unet --features 8,16,32,64 --dropout 0.1 --patch 64,64,48 --epochs $(ZOO_EPOCHS) --lr 3e-3 --seed 0
	$(BIN)/fairseg --quiet train sample_data/fundus --out build/zoo/fundus-unet2d.pt \
	    --network unet --features 8,16,32,64 --dropout 0.1 --epochs 60 --lr 3e-3 --seed 0
	$(BIN)/python -c "from napari_fairseg.training.trainer import record_training_geometry as r; \
	    from napari_fairseg.data.readers import open_cohort as o; from napari_fairseg.models.zoo import BUNDLED_META as m; \
	    r('build/zoo/brain-light-unet.pt', '$(ZOO)/brain-light-unet.pt', o('build/zoo/brain-zoo.csv'), meta=m['brain']); \
	    r('build/zoo/fundus-unet2d.pt', '$(ZOO)/fundus-unet2d.pt', o('sample_data/fundus'), meta=m['fundus'])"
	cp build/zoo/brain-light-unet.log.csv build/zoo/fundus-unet2d.log.csv $(ZOO)/

clean:
	rm -rf $(VENV) demo_output build *.egg-info mutants
