"""The job event stream's pure parts: which states are sent, and how a message is framed."""

from __future__ import annotations

import json

import pytest

from common.schemas import JobStatus
from router.events import advances, comment, frame


def status(
    state: str, step: int | None = None, steps: int | None = None, position: int | None = None, at: float = 100.0
) -> JobStatus:
    return JobStatus(
        job_id="j1",
        state=state,
        step=step,
        steps=steps,
        position=position,  # type: ignore[arg-type]
        updated_at=at,
    )


@pytest.mark.parametrize(
    ("last", "new", "sent"),
    [
        (None, status("queued"), True),
        (None, status("done"), True),
        (status("queued", position=2), status("queued", position=1), True),
        (status("queued", position=1), status("queued", position=1), False),
        (status("queued"), status("running"), True),
        (status("running"), status("running", 1, 20), True),
        (status("running", 3, 20), status("running", 4, 20), True),
        (status("running", 4, 20), status("running", 3, 20), False),  # an older message after a newer read
        (status("running", 4, 20), status("running", 4, 20), False),
        (status("running", 4, 20), status("queued", position=0), False),
        (status("running", 4, 20), status("done"), True),
        (status("queued"), status("cancelled"), True),
        (status("running", 2, 20), status("failed"), True),
        (status("done"), status("done"), False),
        (status("cancelled"), status("done"), False),
        # Clocks differ between router and workers: a later state counts even with an earlier time.
        (status("queued", at=200.0), status("running", 1, 20, at=199.0), True),
    ],
)
def test_advances_only_forward(last: JobStatus | None, new: JobStatus, sent: bool) -> None:
    assert advances(last, new) is sent


def test_frame_is_one_sse_message_with_the_api_field_names() -> None:
    raw = frame(status("running", 3, 20), seq=7).decode()
    assert raw.endswith("\n\n") and raw.count("\n\n") == 1
    lines = raw.strip().split("\n")
    assert lines[0] == "id: 7"
    assert lines[1].startswith("data: ")
    data = json.loads(lines[1][len("data: ") :])
    assert data["id"] == "j1" and data["status"] == "running"
    assert (data["step"], data["steps"]) == (3, 20)
    assert "job_id" not in data and "state" not in data and "error" not in data  # None fields left out


def test_comment_is_ignored_by_sse_clients() -> None:
    assert comment("keep-alive") == b": keep-alive\n\n"
