"""The HTTP surface under bad input, against a running `taskwire api` (issue 4, "Proof").

One row per case. Every row asserts the exact status and error code, that nothing was
created (the tasks table is counted directly), that nothing leaked (no secret, server URL,
stack trace, schema hint or other owner's data in the answer) and that the API answered
rather than logged an incident. The websocket rows are in test_bad_input_ws.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt
import pytest

from tests.e2e.conftest import Deployment
from tests.e2e.hardened import (
    ALLOWED_ORIGIN,
    CANCEL,
    CREATE,
    FOREIGN_ORIGIN,
    GET,
    RETRY,
    UNKNOWN_ID,
    ApiLog,
    Guard,
    TaskRows,
    assert_nothing_leaked,
    error_codes,
    fresh_subject,
    json_or_none,
    poll,
    wait_for_row_status,
)
from tests.support.auth import TEST_JWT_SECRET, token_for
from tests.support.processes import ApiAddress, TaskwireProcess, free_port, wait_until_ready

pytestmark = [
    pytest.mark.timeout(120),
    # The alg-hs512 row signs with the server's (HS256-sized) secret on purpose.
    pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning"),
]

POISON = "!poison!"
MAX_INPUT_BYTES = 64 * 1024
MAX_REQUEST_BYTES = 256 * 1024
RATE_BURST = 5
# The module's deployment (the `api` fixture of tests/e2e/conftest.py).
PROCESSORS = 1
SETTINGS = {
    "ALLOWED_ORIGINS": ALLOWED_ORIGIN,
    # A burst of 5, then one task per 10 s: a flood sent within seconds gets exactly 5.
    "RATE_LIMIT_PER_MINUTE": "6",
    "RATE_LIMIT_BURST": str(RATE_BURST),
    "MAX_INPUT_BYTES": str(MAX_INPUT_BYTES),
    "MAX_REQUEST_BYTES": str(MAX_REQUEST_BYTES),
    # A poisoned task is FAILED after its one attempt: a victim task to retry.
    "POISON_MARKER": POISON,
    "MAX_ATTEMPTS": "1",
}


@pytest.fixture
async def client(api: Deployment) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api.base_url, timeout=10) as http:
        yield http


async def graphql(
    client: httpx.AsyncClient,
    query: str,
    variables: dict[str, Any] | None = None,
    *,
    token: str | None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    return await client.post(
        "/graphql", json={"query": query, "variables": variables}, headers=sent
    )


async def create(client: httpx.AsyncClient, owner: str, text: str) -> dict[str, Any]:
    response = await graphql(
        client,
        "mutation($input: String!) { createTask(input: {inputData: $input}) { id watchToken } }",
        {"input": text},
        token=token_for(owner),
    )
    assert response.status_code == 200, response.text
    created: dict[str, Any] = response.json()["data"]["createTask"]
    return created


@pytest.fixture
async def guard(api: Deployment, rows: TaskRows) -> Guard:
    return await Guard(api, rows).arm()


# ---------------------------------------------------------------------------- bad tokens


def _claims(subject: str, **changes: object) -> dict[str, object]:
    """Good user claims for `subject`; a change to None removes that claim."""
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": "taskwire",
        "aud": "taskwire",
        "sub": subject,
        "iat": now,
        "exp": now + 600,
    }
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not None}


def _signed(claims: dict[str, object], *, key: str = TEST_JWT_SECRET, alg: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=alg)


def _unsigned(claims: dict[str, object]) -> str:
    return jwt.encode(claims, "", algorithm="none")


@dataclass(frozen=True)
class BadToken:
    # The Authorization header for the row's subject (None: no header at all).
    header: Callable[[str], str | None]
    # A few words the refusal must say (it may say more, never the token).
    says: str


BAD_TOKENS = {
    "missing-header": BadToken(lambda s: None, "required"),
    "empty-header": BadToken(lambda s: "", "required"),
    "wrong-scheme": BadToken(
        lambda s: "Basic " + base64.b64encode(f"{s}:password".encode()).decode(), "Bearer"
    ),
    "bearer-without-token": BadToken(lambda s: "Bearer", "Bearer <token>"),
    "garbage": BadToken(lambda s: "Bearer not.a.jwt", "not valid"),
    "alg-none": BadToken(lambda s: f"Bearer {_unsigned(_claims(s))}", "algorithm"),
    "alg-hs512": BadToken(lambda s: f"Bearer {_signed(_claims(s), alg='HS512')}", "algorithm"),
    "wrong-secret": BadToken(
        lambda s: f"Bearer {_signed(_claims(s), key='another-secret-' + 'x' * 32)}", "not valid"
    ),
    "expired": BadToken(
        lambda s: f"Bearer {_signed(_claims(s, exp=int(time.time()) - 120))}", "expired"
    ),
    "not-yet-valid": BadToken(
        lambda s: f"Bearer {_signed(_claims(s, nbf=int(time.time()) + 600))}", "not valid yet"
    ),
    "wrong-audience": BadToken(
        lambda s: f"Bearer {_signed(_claims(s, aud='another-api'))}", "audience"
    ),
    "wrong-issuer": BadToken(
        lambda s: f"Bearer {_signed(_claims(s, iss='https://evil.example.net'))}", "issuer"
    ),
    "missing-sub": BadToken(lambda s: f"Bearer {_signed(_claims(s, sub=None))}", "'sub'"),
    "missing-exp": BadToken(lambda s: f"Bearer {_signed(_claims(s, exp=None))}", "'exp'"),
    "control-character-sub": BadToken(
        lambda s: f"Bearer {_signed(_claims(s + chr(0)))}", "subject"
    ),
    "oversize-token": BadToken(
        lambda s: f"Bearer {_signed(_claims(s, pad='x' * 9000))}", "too large"
    ),
}


@pytest.mark.parametrize("case", BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
async def test_a_bad_token_is_refused(
    client: httpx.AsyncClient, guard: Guard, case: BadToken
) -> None:
    subject = fresh_subject("token")
    header = case.header(subject)
    headers = {} if header is None else {"Authorization": header}
    response = await client.post(
        "/graphql", json={"query": CREATE, "variables": {"input": "x"}}, headers=headers
    )
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="taskwire"')
    body = response.json()
    assert error_codes(body) == ["UNAUTHENTICATED"]
    assert case.says in body["errors"][0]["message"]
    assert "data" not in body
    token = (header or "").removeprefix("Bearer").strip()
    # The refusal repeats nothing of the token (not even a part of a refused one).
    await guard.check(response.text, *([token[-20:]] if len(token) >= 20 else []))


# ------------------------------------------------------------- requests refused before GraphQL


@dataclass(frozen=True)
class Raw:
    """One HTTP request exactly as sent, and the status (and error code, when the answer is
    a GraphQL error) it must get."""

    status: int
    code: str | None = None
    method: str = "POST"
    body: bytes | None = None
    content_type: str | None = "application/json"
    params: dict[str, str] = field(default_factory=dict)
    authenticated: bool = True
    accept: str | None = None
    # Sent chunked (no Content-Length), this many bytes: the limit must hold while reading.
    chunked: int = 0


def _json(value: object) -> bytes:
    return json.dumps(value).encode()  # ASCII: a lone surrogate is written as an escape


CREATE_LITERAL = 'mutation { createTask(input: {inputData: "should not exist"}) { id } }'
SUBSCRIBE_LITERAL = f'subscription {{ taskUpdated(id: "{UNKNOWN_ID}") {{ id status }} }}'
CREATE_BODY = _json({"query": CREATE_LITERAL})


async def _chunks(total: int) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        yield b" " * 16384
        sent += 16384


RAW_REQUESTS = {
    "get-query": Raw(400, method="GET", params={"query": "{ __typename }"}, body=None),
    "get-mutation": Raw(400, method="GET", params={"query": CREATE_LITERAL}, body=None),
    # GET is not authenticated (it serves GraphiQL): it must not run any operation at all.
    "get-subscription-without-token": Raw(
        400,
        method="GET",
        params={"query": SUBSCRIBE_LITERAL},
        body=None,
        authenticated=False,
        accept='multipart/mixed;subscriptionSpec="1.0",application/json',
    ),
    "subscription-over-post": Raw(400, body=_json({"query": SUBSCRIBE_LITERAL})),
    "json-array-batch": Raw(400, body=_json([{"query": CREATE_LITERAL}] * 2)),
    "empty-json-array-batch": Raw(400, body=b"[]"),
    "text-plain-post": Raw(400, body=CREATE_BODY, content_type="text/plain"),
    "form-post": Raw(
        400,
        body=urlencode({"query": CREATE_LITERAL}).encode(),
        content_type="application/x-www-form-urlencoded",
    ),
    "multipart-form-post": Raw(
        400,
        body=(
            b'--xyz\r\nContent-Disposition: form-data; name="operations"\r\n\r\n'
            + CREATE_BODY
            + b"\r\n--xyz--\r\n"
        ),
        content_type="multipart/form-data; boundary=xyz",
    ),
    "graphql-content-type": Raw(
        400, body=CREATE_LITERAL.encode(), content_type="application/graphql"
    ),
    "malformed-json": Raw(400, body=b'{"query": "{ __typename }"'),
    "empty-body": Raw(400, body=b""),
    "json-with-trailing-garbage": Raw(400, body=CREATE_BODY + b" }"),
    "json-string-body": Raw(400, body=_json(CREATE_LITERAL)),
    "json-null-body": Raw(400, body=b"null"),
    # Far deeper than json.loads can recurse, well under the body limit.
    "deeply-nested-json": Raw(400, body=b"[" * 50_000 + b"]" * 50_000),
    "deeply-nested-json-object": Raw(400, body=b'{"a":' * 20_000 + b"1" + b"}" * 20_000),
    "invalid-utf8": Raw(
        400, body=b'{"query": "mutation { createTask(input: {inputData: \xff}) }"}'
    ),
    "query-not-a-string": Raw(400, body=_json({"query": ["{ __typename }"]})),
    "variables-not-an-object": Raw(
        400, body=_json({"query": CREATE, "variables": '{"input": "x"}'})
    ),
    "unknown-operation-name": Raw(400, body=_json({"query": CREATE_LITERAL, "operationName": "X"})),
    "oversize-body": Raw(
        413,
        "PAYLOAD_TOO_LARGE",
        body=_json({"query": CREATE, "variables": {"input": "x" * MAX_REQUEST_BYTES}}),
    ),
    "oversize-chunked-body": Raw(413, "PAYLOAD_TOO_LARGE", chunked=MAX_REQUEST_BYTES + 1),
}


@pytest.mark.parametrize("case_id", RAW_REQUESTS.keys())
async def test_a_malformed_request_is_refused(
    client: httpx.AsyncClient, guard: Guard, case_id: str
) -> None:
    case = RAW_REQUESTS[case_id]
    headers: dict[str, str] = {}
    if case.authenticated:
        headers["Authorization"] = f"Bearer {token_for(fresh_subject('raw'))}"
    if case.content_type is not None and case.method == "POST":
        headers["Content-Type"] = case.content_type
    if case.accept is not None:
        headers["Accept"] = case.accept
    content: bytes | AsyncIterator[bytes] | None = case.body
    if case.chunked:
        content = _chunks(case.chunked)
    response = await client.request(
        case.method, "/graphql", params=case.params, content=content, headers=headers
    )
    assert response.status_code == case.status, response.text[:300]
    body = json_or_none(response.text)
    if case.code is not None:
        assert error_codes(body) == [case.code]
    assert "INTERNAL_SERVER_ERROR" not in response.text
    await guard.check(response.text)


# --------------------------------------------------------- operations refused by GraphQL


@dataclass(frozen=True)
class Op:
    """A GraphQL request that gets a 200 answer with this first error code (None: no error)
    and, when `data` is given, exactly this data."""

    query: str
    variables: dict[str, Any] | None = None
    code: str | None = None
    says: str = ""
    data: Any = "any"
    # The request body as sent: httpx cannot encode a lone surrogate, json.dumps escapes it.
    raw: bytes | None = None


def _aliases(count: int) -> str:
    return (
        "mutation { "
        + " ".join(
            f'a{n}: createTask(input: {{inputData: "alias {n}"}}) {{ id }}' for n in range(count)
        )
        + " }"
    )


_DEEP = "{ " + "task(id: $id) { " * 12 + "id" + " }" * 12 + " }"
_FAN_OUT = (
    "query($id: ID!) { task(id: $id) { ...F0 } } "
    + " ".join(f"fragment F{n} on Task {{ {' '.join([f'...F{n + 1}'] * 8)} }}" for n in range(10))
    + " fragment F10 on Task { id }"
)
_VALIDATION = "GRAPHQL_VALIDATION_FAILED"
KEYED = (
    "mutation($input: String!, $key: String) "
    "{ createTask(input: {inputData: $input, idempotencyKey: $key}) { id } }"
)

OPERATIONS = {
    "alias-flood": Op(_aliases(16), code=_VALIDATION, says="aliases", data=None),
    "token-flood": Op(
        "{ " + "__typename " * 1200 + "}", code="GRAPHQL_PARSE_FAILED", says="tokens", data=None
    ),
    "depth-flood": Op(
        "query($id: ID!) " + _DEEP, {"id": UNKNOWN_ID}, code=_VALIDATION, says="deep", data=None
    ),
    "cyclic-fragments": Op(
        "query($id: ID!) { task(id: $id) { ...A } } "
        "fragment A on Task { id ...B } fragment B on Task { status ...A }",
        {"id": UNKNOWN_ID},
        code=_VALIDATION,
        says="within itself",
        data=None,
    ),
    # Each fragment spreads the next eight times: 8^10 paths, one small document.
    "fragment-fan-out": Op(_FAN_OUT, {"id": UNKNOWN_ID}, data={"task": None}),
    "introspection-schema": Op(
        "{ __schema { types { name } } }", code=_VALIDATION, says="introspection", data=None
    ),
    "introspection-type": Op(
        '{ __type(name: "CreateTaskInput") { inputFields { name } } }',
        code=_VALIDATION,
        says="introspection",
        data=None,
    ),
    "misspelt-field": Op(
        "query($id: ID!) { task(id: $id) { stauts } }", {"id": UNKNOWN_ID}, code=_VALIDATION
    ),
    "misspelt-argument": Op('{ task(idd: "x") { id } }', code=_VALIDATION),
    "misspelt-type": Op(
        "query($id: ID!) { task(id: $id) { ...F } } fragment F on Tsk { id }",
        {"id": UNKNOWN_ID},
        code=_VALIDATION,
    ),
    "nul-byte-in-input-variable": Op(
        CREATE, {"input": "a\x00b"}, code="BAD_USER_INPUT", says="NUL", data=None
    ),
    "nul-byte-in-input-literal": Op(
        'mutation { createTask(input: {inputData: "a\\u0000b"}) { id } }',
        code="BAD_USER_INPUT",
        says="NUL",
        data=None,
    ),
    "lone-surrogate-in-input": Op(
        CREATE,
        raw=_json({"query": CREATE, "variables": {"input": "\ud800"}}),
        code="BAD_USER_INPUT",
        data=None,
    ),
    "oversize-input": Op(
        CREATE, {"input": "x" * (MAX_INPUT_BYTES + 1)}, code="BAD_USER_INPUT", data=None
    ),
    # Under the limit in characters, over it in UTF-8 bytes.
    "oversize-input-multibyte": Op(
        CREATE, {"input": "é" * (MAX_INPUT_BYTES // 2 + 1)}, code="BAD_USER_INPUT", data=None
    ),
    "oversize-idempotency-key": Op(
        'mutation($k: String!) { createTask(input: {inputData: "x", idempotencyKey: $k}) { id } }',
        {"k": "k" * 201},
        code="BAD_USER_INPUT",
        data=None,
    ),
    # PostgreSQL text holds neither NUL nor a lone surrogate: refused before the database.
    "nul-byte-in-idempotency-key": Op(
        KEYED, {"input": "x", "key": "a\x00b"}, code="BAD_USER_INPUT", data=None
    ),
    "lone-surrogate-in-idempotency-key": Op(
        KEYED,
        raw=_json({"query": KEYED, "variables": {"input": "x", "key": "\ud800"}}),
        code="BAD_USER_INPUT",
        data=None,
    ),
    "unknown-input-field-variable": Op(
        "mutation($input: CreateTaskInput!) { createTask(input: $input) { id } }",
        {"input": {"inputData": "x", "owner": "someone-else"}},
        code="BAD_USER_INPUT",
        data=None,
    ),
    "unknown-input-field-literal": Op(
        'mutation { createTask(input: {inputData: "x", owner: "someone-else"}) { id } }',
        code=_VALIDATION,
        data=None,
    ),
    "wrong-variable-type-number": Op(CREATE, {"input": 5}, code="BAD_USER_INPUT", data=None),
    "wrong-variable-type-list": Op(CREATE, {"input": ["x"]}, code="BAD_USER_INPUT", data=None),
    "wrong-variable-type-object-id": Op(GET, {"id": {"$ne": None}}, code="BAD_USER_INPUT"),
    "wrong-variable-type-boolean-id": Op(GET, {"id": True}, code="BAD_USER_INPUT"),
    "missing-variable": Op(CREATE, {}, code="BAD_USER_INPUT", data=None),
    "null-variable": Op(CREATE, {"input": None}, code="BAD_USER_INPUT", data=None),
    # Mistakes in the document itself (not in the variables' values) are validation errors.
    "variable-of-the-wrong-type-in-document": Op(
        "query($id: String!) { task(id: $id) { id } }",
        {"id": UNKNOWN_ID},
        code=_VALIDATION,
        data=None,
    ),
    "undefined-variable": Op("{ task(id: $id) { id } }", {"id": UNKNOWN_ID}, code=_VALIDATION),
    "unused-variable": Op(
        "query($id: ID!, $x: Int) { task(id: $id) { id } }",
        {"id": UNKNOWN_ID},
        code=_VALIDATION,
        data=None,
    ),
}


@pytest.mark.parametrize("case_id", OPERATIONS.keys())
async def test_a_bad_operation_is_refused(
    client: httpx.AsyncClient, guard: Guard, case_id: str
) -> None:
    case = OPERATIONS[case_id]
    token = token_for(fresh_subject("op"))
    started = time.monotonic()
    if case.raw is not None:
        response = await client.post(
            "/graphql",
            content=case.raw,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
    else:
        response = await graphql(client, case.query, case.variables, token=token)
    # Refusing is cheap: no document may keep the server busy.
    assert time.monotonic() - started < 5
    assert response.status_code == 200, response.text[:300]
    body = response.json()
    codes = error_codes(body)
    if case.code is None:
        assert codes == []
    else:
        assert codes, body
        assert all(code == case.code for code in codes), codes
        assert case.says in body["errors"][0]["message"]
    if case.data != "any":
        assert body.get("data") == case.data
    if case_id.startswith("introspection"):
        assert "CreateTaskInput" not in response.text
        assert "inputData" not in response.text
    await guard.check(response.text)


# ------------------------------------------------------------------------------- task ids

BAD_IDS = {
    "huge-id": "9" * 100_000,
    "non-uuid-id": "task-1",
    "empty-id": "",
    "sql-quote-id": "' OR '1'='1",
    "sql-drop-id": "1; DROP TABLE tasks; --",
    "sql-after-uuid-id": f"{UNKNOWN_ID}' OR 1=1 --",
    "nul-byte-id": f"{UNKNOWN_ID}\x00",
}
ID_OPERATIONS = {"task": GET, "cancelTask": CANCEL, "retryTask": RETRY}


@pytest.mark.parametrize("operation", ID_OPERATIONS.keys())
@pytest.mark.parametrize("id_case", [*BAD_IDS.keys(), "unknown-uuid"])
async def test_a_bad_or_unknown_id(
    client: httpx.AsyncClient, guard: Guard, operation: str, id_case: str
) -> None:
    """Not a UUID: BAD_USER_INPUT (the database never sees it). A UUID no task has: task is
    null, a mutation NOT_FOUND."""
    task_id = BAD_IDS.get(id_case, UNKNOWN_ID)
    response = await graphql(
        client, ID_OPERATIONS[operation], {"id": task_id}, token=token_for(fresh_subject("id"))
    )
    assert response.status_code == 200
    body = response.json()
    if id_case == "unknown-uuid":
        expected_codes = [] if operation == "task" else ["NOT_FOUND"]
    else:
        expected_codes = ["BAD_USER_INPUT"]
    assert error_codes(body) == expected_codes
    assert body["data"] == ({"task": None} if operation == "task" else None)
    if len(task_id) > 100:
        assert task_id not in response.text  # a huge value is not echoed back
    await guard.check(response.text)


# ----------------------------------------------------------------- another owner's tasks


@pytest.fixture(scope="module")
async def victim(api: Deployment, rows: TaskRows) -> dict[str, str]:
    """Tasks of another owner, one in each state a foreign request could wrongly change or
    reveal: COMPLETED (cancelTask would be a CONFLICT for its owner) and FAILED (retryTask
    would succeed for its owner). Its input is a secret of its own."""
    owner = fresh_subject("victim")
    async with httpx.AsyncClient(base_url=api.base_url, timeout=10) as http:
        completed = await create(http, owner, f"victim secret {uuid.uuid4().hex}")
        failed = await create(http, owner, f"victim secret {POISON} {uuid.uuid4().hex}")
    ids = {"COMPLETED": completed["id"], "FAILED": failed["id"]}
    for status, task_id in ids.items():
        await wait_for_row_status(rows, task_id, status)
    return {"owner": owner, **ids}


@pytest.mark.parametrize("state", ["COMPLETED", "FAILED"])
@pytest.mark.parametrize("operation", ID_OPERATIONS.keys())
async def test_another_owners_task_answers_as_a_missing_one(
    client: httpx.AsyncClient,
    guard: Guard,
    rows: TaskRows,
    victim: dict[str, str],
    operation: str,
    state: str,
) -> None:
    task_id = victim[state]
    before = await rows.get(task_id)
    assert before is not None
    intruder = token_for(fresh_subject("intruder"))
    query = ID_OPERATIONS[operation]
    theirs = await graphql(client, query, {"id": task_id}, token=intruder)
    missing = await graphql(client, query, {"id": UNKNOWN_ID}, token=intruder)
    # The id travels as a variable, so the two answers must be the same bytes.
    assert theirs.status_code == missing.status_code == 200
    assert theirs.content == missing.content
    assert theirs.headers["content-type"] == missing.headers["content-type"]
    assert error_codes(theirs.json()) == ([] if operation == "task" else ["NOT_FOUND"])
    # Nothing changed (a retry would have re-queued the FAILED one) and nothing was lost:
    # the owner still reads the task as it was.
    assert await rows.get(task_id) == before
    mine = await graphql(client, GET, {"id": task_id}, token=token_for(victim["owner"]))
    assert mine.json()["data"]["task"]["status"] == state
    await guard.check(theirs.text, before.input_data, victim["owner"])


# -------------------------------------------------------------------------- watch tokens


@pytest.fixture(scope="module")
async def watched(api: Deployment, rows: TaskRows) -> dict[str, str]:
    """Two tasks of one owner, done (so that only a write could change them), and the watch
    token of the first."""
    owner = fresh_subject("watched")
    async with httpx.AsyncClient(base_url=api.base_url, timeout=10) as http:
        first = await create(http, owner, f"watched {uuid.uuid4().hex}")
        second = await create(http, owner, f"sibling {uuid.uuid4().hex}")
    assert first["watchToken"]
    await poll(
        lambda: rows.owned_by(owner),
        lambda found: [row.status for row in found] == ["COMPLETED", "COMPLETED"],
        timeout=30,
        what="the watched tasks completed",
    )
    return {"owner": owner, "id": first["id"], "token": first["watchToken"], "other": second["id"]}


@pytest.mark.parametrize(
    ("operation", "variables"),
    [
        pytest.param(CREATE, {"input": "from a watch token"}, id="createTask"),
        pytest.param(CANCEL, None, id="cancelTask"),
        pytest.param(RETRY, None, id="retryTask"),
    ],
)
async def test_a_watch_token_may_not_write(
    client: httpx.AsyncClient,
    guard: Guard,
    rows: TaskRows,
    watched: dict[str, str],
    operation: str,
    variables: dict[str, Any] | None,
) -> None:
    before = await rows.get(watched["id"])
    response = await graphql(
        client, operation, variables or {"id": watched["id"]}, token=watched["token"]
    )
    assert response.status_code == 200
    body = response.json()
    assert error_codes(body) == ["FORBIDDEN"]
    assert body["data"] is None
    assert await rows.get(watched["id"]) == before
    await guard.check(response.text)


@pytest.mark.parametrize("target", ["sibling-task", "another-owners-task"])
async def test_a_watch_token_reads_only_its_own_task(
    client: httpx.AsyncClient,
    guard: Guard,
    watched: dict[str, str],
    victim: dict[str, str],
    target: str,
) -> None:
    token = watched["token"]
    own = await graphql(client, GET, {"id": watched["id"]}, token=token)
    assert own.json()["data"]["task"]["id"] == watched["id"]  # the token works for its task
    task_id = watched["other"] if target == "sibling-task" else victim["COMPLETED"]
    other = await graphql(client, GET, {"id": task_id}, token=token)
    missing = await graphql(client, GET, {"id": UNKNOWN_ID}, token=token)
    assert other.status_code == 200
    assert other.content == missing.content == b'{"data":{"task":null}}'
    await guard.check(other.text)


# -------------------------------------------------------------- an internal error, masked


@dataclass
class CrashingApi(ApiAddress):
    port: int
    process: TaskwireProcess


@pytest.fixture(scope="module")
async def crashing_api(api: Deployment) -> AsyncIterator[CrashingApi]:
    """A second API on the same database whose createTask raises an unexpected error with
    DATABASE_URL in its message."""
    port = free_port()
    process = TaskwireProcess(
        "api-crashing",
        ["api", "--port", str(port)],
        env={**api.env, "CRASH_POINT": "unexpected_error"},
        log_dir=api.workdir,
        cwd=api.workdir,
    )
    process.start()
    try:
        crashing = CrashingApi(port=port, process=process)
        await wait_until_ready(crashing.base_url, process)
        yield crashing
    finally:
        process.stop()


@pytest.mark.parametrize(
    "request_id", [None, "client-chosen-id.42"], ids=["server-id", "client-id"]
)
async def test_an_unexpected_error_is_masked_and_logged_with_its_id(
    api: Deployment, rows: TaskRows, crashing_api: CrashingApi, request_id: str | None
) -> None:
    before = await rows.count()
    headers = {"X-Request-ID": request_id} if request_id else {}
    async with httpx.AsyncClient(base_url=crashing_api.base_url, timeout=10) as http:
        response = await graphql(
            http, CREATE, {"input": "x"}, token=token_for(fresh_subject("crash")), headers=headers
        )
    assert response.status_code == 200
    body = response.json()
    assert body["data"] is None
    [error] = body["errors"]
    assert error["message"] == "Unexpected error."
    assert error["path"] == ["createTask"]
    shown = response.headers["X-Request-ID"]
    assert error["extensions"] == {"code": "INTERNAL_SERVER_ERROR", "requestId": shown}
    if request_id is not None:
        assert shown == request_id
    assert_nothing_leaked(response.text, api, "RuntimeError", "bug while connecting")
    assert await rows.count() == before
    # The operator's side: the log line carries the same id, then the real error in full.
    log = crashing_api.process.log_path

    def logged() -> list[str]:
        lines = log.read_text(errors="replace").splitlines()
        start = next((n for n, line in enumerate(lines) if f"[{shown}]" in line), None)
        return [] if start is None else lines[start : start + 40]

    async def read() -> list[str]:
        return logged()

    lines = await poll(
        read,
        lambda found: any("RuntimeError: bug while connecting" in line for line in found),
        timeout=5,
        what="the masked error's log line and traceback",
    )
    assert " ERROR " in lines[0]
    assert "Traceback (most recent call last):" in lines
    assert any(api.env["DATABASE_URL"] in line for line in lines if "RuntimeError" in line)


# --------------------------------------------------------------------------- rate limits


async def test_a_flood_from_one_owner_is_rate_limited(
    client: httpx.AsyncClient, api: Deployment, rows: TaskRows
) -> None:
    flooder = fresh_subject("flooder")
    token = token_for(flooder)
    log = ApiLog(api)
    responses = await asyncio.gather(
        *(graphql(client, CREATE, {"input": f"flood {n}"}, token=token) for n in range(12))
    )
    assert all(r.status_code == 200 for r in responses)
    accepted = [
        r.json()["data"]["createTask"]["id"] for r in responses if not r.json().get("errors")
    ]
    limited = [r for r in responses if r.json().get("errors")]
    assert len(accepted) == RATE_BURST
    assert len(limited) == 12 - RATE_BURST
    for response in limited:
        body = response.json()
        assert error_codes(body) == ["RATE_LIMITED"]
        retry_after = body["errors"][0]["extensions"]["retryAfter"]
        assert isinstance(retry_after, int)
        assert 1 <= retry_after <= 60
        assert response.headers["Retry-After"] == str(retry_after)
        assert body["data"] is None
    # Exactly the accepted tasks exist, none more, none lost, and each is done in the end.
    assert {row.id for row in await rows.owned_by(flooder)} == set(accepted)
    for task_id in accepted:
        await wait_for_row_status(rows, task_id, "COMPLETED")
    # Another owner is not held back by the flood.
    bystander = fresh_subject("bystander")
    response = await graphql(client, CREATE, {"input": "unaffected"}, token=token_for(bystander))
    assert error_codes(response.json()) == []
    assert len(await rows.owned_by(bystander)) == 1
    assert log.incidents() == []


# ---------------------------------------------------------------------------------- CORS


@pytest.mark.parametrize(
    ("origin", "status", "allowed"),
    [
        pytest.param(ALLOWED_ORIGIN, 200, True, id="preflight-allowed-origin"),
        pytest.param(FOREIGN_ORIGIN, 400, False, id="preflight-foreign-origin"),
    ],
)
async def test_cors_preflight(
    client: httpx.AsyncClient, guard: Guard, origin: str, status: int, allowed: bool
) -> None:
    response = await client.options(
        "/graphql",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert response.status_code == status
    assert response.headers.get("Access-Control-Allow-Origin") == (origin if allowed else None)
    # Bearer tokens, never cookies: credentials are not allowed from any origin.
    assert "Access-Control-Allow-Credentials" not in response.headers
    if allowed:
        assert "authorization" in response.headers["Access-Control-Allow-Headers"].lower()
    await guard.check(response.text)


@pytest.mark.parametrize(
    "origin", [ALLOWED_ORIGIN, FOREIGN_ORIGIN], ids=["allowed-origin", "foreign-origin"]
)
async def test_cors_headers_on_a_post(client: httpx.AsyncClient, guard: Guard, origin: str) -> None:
    response = await graphql(
        client,
        "{ __typename }",
        token=token_for(fresh_subject("cors")),
        headers={"Origin": origin},
    )
    assert response.status_code == 200
    expected = origin if origin == ALLOWED_ORIGIN else None
    # Without the header a browser keeps the answer from the foreign page.
    assert response.headers.get("Access-Control-Allow-Origin") == expected
    await guard.check(response.text)
