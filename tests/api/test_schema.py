"""Schemathesis against the server's own OpenAPI schema, with a bounded number of examples: no 5xx, every
status code, content type, header and body as the schema declares, and requests the schema forbids are
refused.

``positive_data_acceptance`` (every schema-valid request is accepted) is left out on purpose: whether an
upload is an image the model can take depends on its content (415, 422), which no schema can describe.
"""

from __future__ import annotations

import subprocess
import sys

from tests.api.conftest import KEY_A

CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "allow_header_conformance",
    "unsupported_method",
    "use_after_free",
    "ensure_resource_availability",
]


def test_schemathesis_finds_nothing(server, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{server.url}/openapi.json",
            "--header",
            f"X-API-Key: {KEY_A}",
            "--checks",
            ",".join(CHECKS),
            "--max-examples",
            "30",
            "--phases",
            "examples,coverage,fuzzing",
            "--seed",
            "7",
            "--workers",
            "1",
            "--no-shrink",
            "--request-timeout",
            "30",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert "passed" in result.stdout


def test_every_error_is_declared_in_the_one_shape(client):
    schema = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in schema["components"]["schemas"], "validation errors are ours (400)"
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if status.startswith("4") and status != "422" or status == "422" and method == "post":
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorBody"), (method, path, status)
