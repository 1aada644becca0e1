"""Throwaway real servers on loopback, started as subprocesses: PostgreSQL (postgres.py) and an S3-speaking
object store (s3.py, moto's server, with a byte-counting front in s3_proxy.py). `trainnet demo --scale-out`,
the tests and the benchmarks use them; each is a context manager that starts the server, yields its URL and
stops it (bounded waits: a server that cannot start raises with its log)."""
