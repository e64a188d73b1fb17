# The two commands of the README, and a few for developers.
.PHONY: lab test lint bench

# Run the appliance in lab mode: SQLite, its own network namespace and bridge, web on 127.0.0.1:8080.
lab:
	scripts/bootstrap
	.venv/bin/kiln lab $(LAB_ARGS)

# Install everything the tests need and run the whole suite.
test:
	scripts/bootstrap --test
	scripts/run-tests

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy appliance services web
	.venv/bin/lint-imports
