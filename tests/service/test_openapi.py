"""The OpenAPI document tells the truth: a bounded schemathesis run over every operation against a real
``trackin serve`` (SQLite store) finds no server error, no undocumented status, no answer off its schema;
and the document's own claims (the error object on 422, the id pattern, local Swagger UI assets).

The run uses schemathesis's CLI on the served ``/openapi.json`` with every check but two:

- ``positive_data_acceptance``: a schema-valid body can still be refused for what JSON Schema cannot say
  (an ``x`` of the wrong length for the stream's spec, a spec over ``TRACKIN_MAX_STREAM_BYTES``): 422;
- ``negative_data_rejection``: specs are pydantic models in lax mode (``0`` is read as ``false``), so some
  schema-violating values are accepted as their coerced twins.

Observation, prediction and label operations target an existing stream (the config below), so the fuzzer
reaches their validation rather than stopping at 404.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.service import LINEAR, create
from tests.support.server import TrackinServer

pytestmark = pytest.mark.timeout(240)

_SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
_CONFIG = """
[[operations]]
include-path-regex = "/(observations|predict|labels)$"
parameters = { "stream_id" = "fuzz-lin" }
"""
SEED = int(os.environ.get("TRACKIN_FUZZ_SEED", "20261201"))


_ADMIN = "fuzz-admin-" + "0" * 32


@pytest.mark.parametrize("credentials", [True, False], ids=["with-key", "without-key"])
def test_schemathesis_finds_no_server_error_nor_undocumented_status(
    tmp_path: Path, credentials: bool
) -> None:
    """Against a server with API keys: with an admin key the fuzzer reaches every operation's validation;
    without one, every guarded operation must answer its documented 401."""
    # Specs of up to 16 MiB of state: a fuzzed spec within the default 256 MiB (an mlp of 3,000-wide layers,
    # float64) took more than the fuzzer's 10 s request timeout to create and checkpoint on a loaded machine;
    # bigger ones get their documented 422, as at any limit.
    env = {"TRACKIN_BOOTSTRAP_ADMIN_KEY": _ADMIN, "TRACKIN_MAX_STREAM_BYTES": "16MiB"}
    with TrackinServer(tmp_path / "data", store="sqlite", env=env) as server:
        auth = {"Authorization": f"Bearer {_ADMIN}"}
        with httpx.Client(base_url=server.url, timeout=30, headers=auth) as http:
            create(http, "fuzz-lin", LINEAR)
        (tmp_path / "schemathesis.toml").write_text(_CONFIG)
        header = ["--header", f"Authorization: Bearer {_ADMIN}"] if credentials else []
        run = subprocess.run(
            [
                str(_SCHEMATHESIS),
                "run",
                f"{server.url}/openapi.json",
                *header,
                "--checks",
                "all",
                "--exclude-checks",
                "positive_data_acceptance,negative_data_rejection",
                "--max-examples",
                "15" if credentials else "3",
                "--max-time",
                "40" if credentials else "15",
                "--seed",
                str(SEED),
                "--no-color",
                "--warnings",
                "off",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=200,
        )
        logs = server.logs()
    assert run.returncode == 0, f"{run.stdout[-6000:]}\n{run.stderr[-2000:]}"
    selected = re.search(r"Selected: (\d+)/(\d+)\s+Tested: (\d+)", run.stdout)
    assert selected is not None, run.stdout[-2000:]
    assert selected[1] == selected[2] == selected[3], run.stdout[-2000:]  # every operation was tested
    assert "internal error" not in logs, logs[-4000:]


def test_security_is_documented(http: httpx.Client) -> None:
    doc = http.get("/openapi.json").json()
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": doc["components"]["securitySchemes"]["bearer"]["description"],
    }
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            guarded = path.startswith("/v1")
            assert ("security" in operation) == guarded, (method, path)
            if guarded:
                assert {"401", "403", "429", "503"} <= set(operation["responses"]), (method, path)


def test_errors_are_documented_as_the_error_object(http: httpx.Client) -> None:
    doc = http.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    error_ref = {"$ref": "#/components/schemas/ErrorOut"}
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "500" in responses, (method, path)
            for status, response in responses.items():
                if status.startswith(("4", "5")) and path != "/readyz":
                    assert response["content"]["application/json"]["schema"] == error_ref, (method, path)
                if status.startswith("2") and status != "204":
                    assert response["content"]["application/json"]["schema"] != {}, (method, path, status)
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path":
                    assert parameter["schema"]["pattern"].endswith("{1,128}$")
    for path in ("/v1/streams/{stream_id}/predict", "/v1/streams/{stream_id}/labels"):
        content = doc["paths"][path]["post"]["requestBody"]["content"]
        assert set(content) == {"application/json", "application/msgpack"}
        assert content["application/json"]["schema"]["properties"]
    observations = doc["paths"]["/v1/observations"]["post"]
    assert set(observations["requestBody"]["content"]) == {"application/json", "application/msgpack"}
    assert set(observations["responses"]) >= {"200", "404", "413", "415", "422", "500", "503", "507"}


def test_docs_are_served_without_a_cdn(http: httpx.Client) -> None:
    page = http.get("/docs")
    assert page.status_code == 200
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    assert urls
    for url in urls:
        assert url.startswith("/"), url  # nothing from another host
        assert http.get(url).status_code == 200, url
    assert "cdn" not in page.text.lower()
