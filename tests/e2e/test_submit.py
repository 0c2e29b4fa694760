"""`taskwire submit` as a user runs it: a child process against a real deployment."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import uuid
from dataclasses import dataclass

import pytest

from taskwire.settings import Settings
from taskwire.tokens import mint_token
from tests.e2e.conftest import Deployment
from tests.support.auth import token_for
from tests.support.client import get_task
from tests.support.processes import TASKWIRE

pytestmark = pytest.mark.timeout(120)

POISON = "!poison!"
SETTINGS = {"POISON_MARKER": POISON, "MAX_ATTEMPTS": "1"}
PROCESSORS = 1
UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    def __post_init__(self) -> None:
        # Whatever happened, it is told in words, never as a traceback.
        assert "Traceback" not in self.err, self.err


def cli_env(api: Deployment, token: str | None = None) -> dict[str, str]:
    return {**os.environ, "TASKWIRE_URL": api.http_url, "TASKWIRE_TOKEN": token or token_for()}


async def start(
    api: Deployment, *args: str, token: str | None = None
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        TASKWIRE,
        "submit",
        *args,
        env=cli_env(api, token),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(process: asyncio.subprocess.Process, stdin: str = "") -> Outcome:
    async with asyncio.timeout(60):
        out, err = await process.communicate(stdin.encode())
    assert process.returncode is not None
    return Outcome(process.returncode, out.decode(), err.decode())


async def submit(api: Deployment, *args: str, stdin: str = "", token: str | None = None) -> Outcome:
    return await finish(await start(api, *args, token=token), stdin)


def statuses(progress: str) -> list[str]:
    return re.findall(r"^\[ *[0-9.]+s\] (\w+)", progress, flags=re.MULTILINE)


async def test_submit_prints_the_id_of_a_stored_task(api: Deployment) -> None:
    done = await submit(api, "stressed")
    assert done.code == 0, done.err
    match = re.fullmatch(f"({UUID}) PENDING\n", done.out)
    assert match, done.out
    stored = await get_task(api.http_url, match[1])
    assert stored is not None
    assert stored["inputData"] == "stressed"


async def test_the_same_idempotency_key_gives_the_same_task(api: Deployment) -> None:
    key = uuid.uuid4().hex
    first = await submit(api, "once", "--idempotency-key", key)
    second = await submit(api, "once", "--idempotency-key", key)
    assert (first.code, second.code) == (0, 0)
    assert first.out.split()[0] == second.out.split()[0]


async def test_watch_follows_the_task_to_its_reversed_text(api: Deployment) -> None:
    done = await submit(api, "-", "--watch", stdin="stressed ✓\n")
    assert done.code == 0, done.err
    lines = done.out.splitlines()
    assert re.fullmatch(f"task {UUID}", lines[0])
    assert statuses(done.out) == ["PENDING", "PROCESSING", "COMPLETED"]
    assert lines[-1] == "✓ desserts"
    assert done.err == ""


async def test_json_prints_the_final_task(api: Deployment) -> None:
    done = await submit(api, "drawer", "--watch", "--json")
    assert done.code == 0, done.err
    final = json.loads(done.out)
    assert (final["status"], final["result"], final["attempts"]) == ("COMPLETED", "reward", 1)
    assert final["version"] == 3
    assert "COMPLETED" in statuses(done.err)  # the progress went to stderr


async def test_a_failing_task_exits_1_with_its_error(api: Deployment) -> None:
    done = await submit(api, f"doomed {POISON}", "--watch")
    assert done.code == 1, done.err
    assert statuses(done.out)[-1] == "FAILED"
    assert re.fullmatch(
        f"taskwire submit: task {UUID} FAILED after 1 attempt\\(s\\): .*poison marker\n", done.err
    ), done.err


WRONG_KEY = mint_token(Settings(jwt_secret="another-secret-" * 3), "tester", ttl_seconds=3600)


@pytest.mark.parametrize("token", ["not-a-jwt", WRONG_KEY])
async def test_a_bad_token_exits_3_with_the_unauthenticated_message(
    api: Deployment, token: str
) -> None:
    done = await submit(api, "x", "--watch", token=token)
    assert done.code == 3
    assert done.out == ""
    assert done.err.startswith("taskwire submit: ")
    assert done.err.endswith(" [UNAUTHENTICATED]\n")
    assert len(done.err.splitlines()) == 1


async def test_a_bad_token_in_json_mode_prints_the_graphql_error(api: Deployment) -> None:
    done = await submit(api, "x", "--json", token="not-a-jwt")
    assert done.code == 3
    [error] = json.loads(done.out)["errors"]
    assert error["extensions"]["code"] == "UNAUTHENTICATED"
    assert error["message"]


async def test_ctrl_c_exits_130_and_names_the_task(api: Deployment) -> None:
    process = await start(api, "interrupted", "--watch")
    assert process.stdout is not None
    async with asyncio.timeout(30):
        first = (await process.stdout.readline()).decode()
        # The second line is written once the watch runs (and Python's SIGINT handler too).
        await process.stdout.readline()
    process.send_signal(signal.SIGINT)
    done = await finish(process)
    assert done.code == 130
    task_id = first.split()[1]
    assert done.err == f"taskwire submit: interrupted; task {task_id} carries on without us\n"


async def test_watch_survives_an_api_restart(api: Deployment) -> None:
    process = await start(api, "restarted", "--watch")
    assert process.stdout is not None
    async with asyncio.timeout(30):
        await process.stdout.readline()  # task <id>
        await process.stdout.readline()  # the created state: the watch has begun
    # The API goes away mid-watch (closing the socket with 1012) and comes back on its port.
    assert api.api.stop() == 0
    await api.start_api()
    done = await finish(process)
    assert done.code == 0, done.err
    assert done.out.splitlines()[-1] == "detratser"
    assert statuses(done.out)[-1] == "COMPLETED"
    assert "reconnecting in" in done.err
