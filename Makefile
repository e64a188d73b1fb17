# The two commands of the README, and a few for developers.
.PHONY: lab test lint lab-cleanup

# Lab mode creates a network namespace: it needs root.
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

# Run the appliance in lab mode: SQLite in ./var/lab, its own network namespace and bridge, web on
# http://127.0.0.1:8080. LAB_ARGS="--nodes 2" also boots two QEMU nodes on the lab bridge.
lab:
	scripts/bootstrap $(if $(findstring --nodes,$(LAB_ARGS)),--lab-nodes)
	$(SUDO) .venv/bin/kiln lab $(LAB_ARGS)

# Remove the namespace and links of a lab that was killed (kill -9, power loss).
lab-cleanup:
	$(SUDO) .venv/bin/kiln lab --cleanup

# Install everything the tests need and run the whole suite.
test:
	scripts/bootstrap --test
	scripts/run-tests $(TEST_ARGS)

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy appliance services web
	.venv/bin/lint-imports
