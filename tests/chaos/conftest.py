"""The chaos run uses the private_broker fixture of tests/conftest.py: it restarts it."""
