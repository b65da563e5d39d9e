"""Property-based fuzzing of the real HTTP API from its own OpenAPI document: no 5xx, no response outside it.

Driven through schemathesis's Python API with hypothesis directly (its pytest plugin does not run under the
pytest this project uses).
"""

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

EXAMPLES_PER_OPERATION = 50
#: no 5xx, and every status, content type, header and body as the document says; requests the document allows but
#: the deployment refuses (a model it does not serve, more dimensions than the model has) are fine as 4xx
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def fuzz(operation, base_url: str, cases: list[str]):
    @given(case=operation.as_strategy())
    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck))
    def check(case):
        case.call_and_validate(base_url=base_url, timeout=60, checks=CHECKS)
        cases.append(operation.label)

    return check


def test_the_api_keeps_to_its_openapi_document(base_url):
    schema = schemathesis.openapi.from_url(base_url + "/openapi.json")
    cases: list[str] = []
    for result in schema.get_all_operations():
        fuzz(result.ok(), base_url, cases)()
    print(f"\nschemathesis ran {len(cases)} cases over {len(set(cases))} operations")
    batch_api = {
        "POST /v1/files",
        "GET /v1/files",
        "GET /v1/files/{file_id}",
        "GET /v1/files/{file_id}/content",
        "DELETE /v1/files/{file_id}",
        "POST /v1/batches",
        "GET /v1/batches",
        "GET /v1/batches/{batch_id}",
        "POST /v1/batches/{batch_id}/cancel",
    }
    assert batch_api <= set(cases) and len(set(cases)) >= 17
