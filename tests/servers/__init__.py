"""Throwaway servers for tests and benchmarks (each module self-contained: start, yield a URL, stop)."""
