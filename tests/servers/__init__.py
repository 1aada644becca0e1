"""Real servers for tests, started as subprocesses on loopback (import as `servers.<name>` after putting
tests/ on sys.path, as tests/store/conftest.py does)."""
