"""Schemathesis fuzzing of a real coordinator process from its /openapi.json: never a 5xx, still serving."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from helpers import ServerProc, free_port, make_run
from hypothesis import HealthCheck, settings

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    srv = ServerProc(make_run(tmp, tokens=100_000), tmp / "state", free_port(), extra=["--rate", "0"])
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()
        log = (tmp / f"server-{srv.port}.log").read_text()
        assert "Traceback" not in log, log[-3000:]


@pytest.fixture(scope="module")
def api_schema(fuzz_server):
    return schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_server_errors(case, fuzz_server):
    response = case.call(base_url=fuzz_server.url, timeout=10)
    assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])
    assert httpx.get(fuzz_server.url + "/v1/info", timeout=5).status_code == 200
