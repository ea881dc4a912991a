# callpath: `make demo` checks the shipped documents on a real kernel; `make test` runs every test.
VENV ?= .venv
OUT ?= callpath-report
# lab kernel for `make demo` (default: the newest installed), e.g. make demo KERNEL=6.1.0-56-amd64
KERNEL ?=

.PHONY: setup demo test unit clean cleanup debuginfo

setup:
	@VENV=$(VENV) bash tools/setup.sh

demo: setup
	@echo "demo: callpath verify on specs/ with the built-in traffic (lab VM when this kernel has no kprobes; ~5 min under TCG)"
	$(VENV)/bin/callpath verify specs/ --out $(OUT) $(if $(KERNEL),--kernel $(KERNEL))
	@echo "demo: report in $(OUT)/report.md and $(OUT)/report.html ($(OUT)/report.json, latency PNGs beside it)"

test: setup
	$(VENV)/bin/python -m pytest -v -rs

unit: setup
	$(VENV)/bin/python -m pytest -v -rs -m "not lab and not root"

# DWARF of the modules the shipped specs need, for RELEASE (default: every lab kernel with headers);
# `make setup` runs it too (DEBUGINFO=none skips). Inlined steps are then probed at their inline sites.
debuginfo:
	@VENV=$(VENV) tools/fetch-debuginfo.sh $(or $(RELEASE),$(shell for k in /boot/vmlinuz-*; do r=$${k#/boot/vmlinuz-}; [ -e /lib/modules/$$r/build ] && echo $$r; done))

cleanup:
	$(VENV)/bin/callpath cleanup

clean:
	rm -rf $(OUT) .pytest_cache
