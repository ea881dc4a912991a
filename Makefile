# callpath: `make demo` checks the shipped documents on a real kernel; `make test` runs every test.
VENV ?= .venv
OUT ?= callpath-report

.PHONY: setup demo test unit clean cleanup

setup:
	@VENV=$(VENV) bash tools/setup.sh

demo: setup
	@echo "demo: callpath verify on specs/ with the built-in traffic (lab VM when this kernel has no kprobes; ~5 min under TCG)"
	$(VENV)/bin/callpath verify specs/ --out $(OUT)
	@echo "demo: report in $(OUT)/report.md and $(OUT)/report.html ($(OUT)/report.json, latency PNGs beside it)"

test: setup
	$(VENV)/bin/python -m pytest -v -rs

unit: setup
	$(VENV)/bin/python -m pytest -v -rs -m "not lab and not root"

cleanup:
	$(VENV)/bin/callpath cleanup

clean:
	rm -rf $(OUT) .pytest_cache
