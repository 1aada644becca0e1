"""Helpers of the coordinator load benchmark (bench/bench_load.py) and the kill-under-load test
(tests/server/test_kill_under_load.py): a coordinator subprocess, and lightweight signed async clients."""
