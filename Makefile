# aodv2 top-level Makefile: packages and packaging checks.
#   make deb              -> dist/aodv2_<version>-1_all.deb (dpkg-buildpackage -us -uc -b)
#   make rpm              -> dist/aodv2-<version>-1.noarch.rpm (rpmbuild; runs on Debian too)
#   make man              -> checks man/*.[58] render without warnings, text copies in dist/man/
#   make check-packaging  -> deb + rpm, then lintian, rpmlint, systemd-analyze verify, man checks
#                            (tests/test_packaging.py against the packages in dist/)
# Builds happen in dist/build/ on a copy of the tracked sources, so the tree stays clean.
# The lead's targets (test, demo, e2e, bench) go below the packaging section.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
DIST ?= dist
BUILD := $(DIST)/build
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' aod/__init__.py)
DEB_VERSION := $(shell dpkg-parsechangelog -S Version 2>/dev/null || sed -n '1s/^aodv2 (\(.*\)).*/\1/p' debian/changelog)
RPM_VERSION := $(shell sed -n 's/^Version:[[:space:]]*//p' packaging/rpm/aodv2.spec)
# what a package is built from (no tests, bench, caches or build output)
PKG_SOURCES := aod bpf debian etc man systemd packaging pyproject.toml README.md $(wildcard LICENSE)
MANPAGES := $(wildcard man/*.5 man/*.8)
# Package builds use the distribution's python3 (/usr/bin), not a pyenv or venv one on PATH.
SYS_PATH := /usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin

.PHONY: all deb rpm man check-packaging check-version clean-packaging
all: deb rpm

check-version:
	@test -n "$(VERSION)" || { echo "cannot read __version__ from aod/__init__.py" >&2; exit 1; }
	@case "$(DEB_VERSION)" in "$(VERSION)"-*) ;; *) echo "debian/changelog is $(DEB_VERSION), aod/__init__.py is $(VERSION)" >&2; exit 1;; esac
	@test "$(RPM_VERSION)" = "$(VERSION)" || { echo "packaging/rpm/aodv2.spec is $(RPM_VERSION), aod/__init__.py is $(VERSION)" >&2; exit 1; }

# copy of the package sources: dist/build/<kind>/aodv2-<version>/
define stage
	rm -rf $(BUILD)/$(1)
	mkdir -p $(BUILD)/$(1)/aodv2-$(VERSION)
	tar -c --exclude=__pycache__ --exclude='*.pyc' $(PKG_SOURCES) | tar -x -C $(BUILD)/$(1)/aodv2-$(VERSION)
endef

deb: check-version
	$(call stage,deb)
	cd $(BUILD)/deb/aodv2-$(VERSION) && env PATH=$(SYS_PATH) dpkg-buildpackage -us -uc -b
	mkdir -p $(DIST)
	rm -f $(DIST)/aodv2_*.deb $(DIST)/aodv2_*.buildinfo $(DIST)/aodv2_*.changes
	mv $(BUILD)/deb/aodv2_$(DEB_VERSION)_all.deb $(BUILD)/deb/aodv2_$(DEB_VERSION)_*.buildinfo \
	   $(BUILD)/deb/aodv2_$(DEB_VERSION)_*.changes $(DIST)/
	@echo "built $(DIST)/aodv2_$(DEB_VERSION)_all.deb"

rpm: check-version
	$(call stage,rpm)
	mkdir -p $(BUILD)/rpm/{SOURCES,SPECS,BUILD,RPMS,SRPMS,BUILDROOT}
	tar -C $(BUILD)/rpm -czf $(BUILD)/rpm/SOURCES/aodv2-$(VERSION).tar.gz aodv2-$(VERSION)
	# --nodeps: BuildRequires name Fedora/EL packages that a Debian host's rpm database does not know
	env PATH=$(SYS_PATH) rpmbuild --nodeps --define "_topdir $(abspath $(BUILD)/rpm)" -bb packaging/rpm/aodv2.spec
	mkdir -p $(DIST)
	rm -f $(DIST)/aodv2-*.rpm
	mv $(BUILD)/rpm/RPMS/noarch/aodv2-$(VERSION)-*.noarch.rpm $(DIST)/
	@echo "built $$(ls $(DIST)/aodv2-$(VERSION)-*.noarch.rpm)"

man:
	mkdir -p $(DIST)/man
	@for f in $(MANPAGES); do \
	    out=$$(MANWIDTH=80 LC_ALL=C.UTF-8 man --warnings -l "$$f" 2>&1 >$(DIST)/man/$$(basename $$f).txt) || { echo "$$f: man failed" >&2; exit 1; }; \
	    if [ -n "$$out" ]; then echo "$$f: warnings:" >&2; echo "$$out" >&2; exit 1; fi; \
	    echo "$$f: ok"; \
	done

check-packaging: deb rpm man
	AOD_PKG_DIST=$(abspath $(DIST)) $(PYTHON) -m pytest -q tests/test_packaging.py

clean-packaging:
	rm -rf $(BUILD) $(DIST)/aodv2_* $(DIST)/aodv2-* $(DIST)/man

# ---------------------------------------------------------------- the rest
# make test      -> tests/run (ruff, mypy, pytest; as root also the VM scenarios)
# make demo      -> aodv2 demo from a local venv (no root)
# make vm-image  -> build or reuse the cached Debian 12 VM image (root; 2.5-5 min cold)
# make vm-tracer -> the eBPF tracers on a real kernel in the VM (~10 min)
# make vm-package-> the .deb installed, enabled, restarted and purged in the VM (~6 min)
# make vm-e2e    -> the .deb end to end on a real systemd host in the VM (~8 min with a cached image);
#                   report in $(VM_SHARE)/e2e/e2e-report.json
# make vm-faults -> the .deb under faults in the VM: unprivileged user, hung or dead SMB server,
#                   full and read-only disk (~4 min); report in $(VM_SHARE)/faults/faults-report.json
# make bench     -> benchmarks (python -m bench; bench/RESULTS.md); bench-quick: CI's short mode
# make vm-overhead -> bench figure 6 in the VM: SMB workload rounds with the tracer's programs
#                   detached/attached (ABBA, one load; ~6 min, not in CI); $(VM_SHARE)/overhead/overhead.json
# make vm-overhead-recorder -> bench figure 6r in the VM: the smb tracer attached throughout, the trace
#                   recorder's tracefs instance off/on between rounds (ABBA; RECORDER_PAIRS pairs, default
#                   240, ~10-12 min, not in CI; RECORDER_OFF=disable: "off" disables the instance's events
#                   instead of removing it); $(VM_SHARE)/overhead-recorder/overhead-recorder.json
# make vm-overhead-nfs -> bench figure 6n in the VM: NFS workload rounds with the nfs tracer's programs
#                   detached/attached (ABBA, one load; not in CI); $(VM_SHARE)/overhead-nfs/overhead-nfs.json
# make vm-bench  -> the VM runs that bench figure 6 reads (vm-tracer, then vm-overhead)
# make vm-matrix -> the kernel-matrix smoke run of one suite (install, both tracer modes, a latency
#                   anomaly, purge; ~8 min); $(VM_SHARE)/matrix/matrix-report.json
# make kernels-table -> README's supported-kernels table from the reports under dist/ (commit it)
# Every vm-* target takes the Debian suite: AOD_VM_SUITE=bullseye|bookworm|trixie (default bookworm);
# each suite has its own image and its own share, dist/vm (bookworm) or dist/vm-<suite>.
export AOD_VM_SUITE ?= bookworm
VM_SHARE ?= $(CURDIR)/dist/vm$(if $(filter-out bookworm,$(AOD_VM_SUITE)),-$(AOD_VM_SUITE))
.PHONY: test demo vm-image vm-tracer vm-package vm-e2e vm-faults vm-test bench bench-quick vm-bench vm-overhead \
	vm-overhead-recorder vm-overhead-nfs vm-matrix kernels-table
test:
	tests/run
demo:
	$(PYTHON) -m venv .venv && .venv/bin/pip install -q . && .venv/bin/aodv2 demo
vm-image:
	$(PYTHON) tests/vm/image.py
vm-tracer: vm-image
	$(PYTHON) tests/vm/run.py --share $(VM_SHARE)/tracer --script tests/vm/scenarios/tracer.sh \
	    --copy aod --copy bpf --timeout 2400
vm-overhead: vm-image
	$(PYTHON) tests/vm/run.py --share $(VM_SHARE)/overhead --script tests/vm/scenarios/overhead.sh \
	    --copy aod --copy bpf --timeout 1800
RECORDER_PAIRS ?= 240
RECORDER_OFF ?= remove
vm-overhead-recorder: vm-image
	mkdir -p $(VM_SHARE)/overhead-recorder
	echo $(RECORDER_PAIRS) > $(VM_SHARE)/overhead-recorder/pairs
	echo $(RECORDER_OFF) > $(VM_SHARE)/overhead-recorder/recorder-off
	$(PYTHON) tests/vm/run.py --share $(VM_SHARE)/overhead-recorder --script tests/vm/scenarios/overhead_recorder.sh \
	    --copy aod --copy bpf --timeout 2700
NFS_PAIRS ?= 120
vm-overhead-nfs: vm-image
	mkdir -p $(VM_SHARE)/overhead-nfs
	echo $(NFS_PAIRS) > $(VM_SHARE)/overhead-nfs/pairs
	$(PYTHON) tests/vm/run.py --share $(VM_SHARE)/overhead-nfs --script tests/vm/scenarios/overhead_nfs.sh \
	    --copy aod --copy bpf --timeout 2400
vm-package: vm-image deb
	$(PYTHON) tests/vm/run.py --share $(VM_SHARE)/package --script tests/vm/scenarios/package.sh \
	    --copy $(DIST)/aodv2_$(DEB_VERSION)_all.deb --copy tests/vm/releases --timeout 2100
vm-e2e: vm-image deb
	$(PYTHON) tests/vm/run.py --share $(VM_SHARE)/e2e --script tests/vm/scenarios/e2e.sh \
	    --copy $(DIST)/aodv2_$(DEB_VERSION)_all.deb --timeout 2100
vm-faults: vm-image deb
	$(PYTHON) tests/vm/run.py --share $(VM_SHARE)/faults --script tests/vm/scenarios/faults.sh \
	    --copy $(DIST)/aodv2_$(DEB_VERSION)_all.deb --timeout 1200
vm-matrix: vm-image deb
	$(PYTHON) tests/vm/run.py --share $(VM_SHARE)/matrix --script tests/vm/scenarios/matrix.sh \
	    --copy $(DIST)/aodv2_$(DEB_VERSION)_all.deb --timeout 1200
kernels-table:
	$(PYTHON) tests/vm/kernels_table.py --dist $(DIST) --readme README.md
vm-test:
	$(PYTHON) -m pytest tests/vm -q
bench:
	$(PYTHON) -m bench
bench-quick:
	$(PYTHON) -m bench --quick
vm-bench: vm-tracer  # then vm-overhead, never both VMs at once (make -j)
	$(MAKE) vm-overhead
