"""Throwaway real servers for tests and benchmarks, started as subprocesses on loopback (each module
self-contained: start, yield a URL, stop). Import as `servers.<name>` after putting tests/ on sys.path."""
