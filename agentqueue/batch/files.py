"""The files of a batch run: input items (one request per JSONL line) and the results file.

An input line is either the request JSON of AgentScope Runtime (an object with `input` messages
and optional `id`, `session_id`, `agent`, …) or the short form `{"id", "session_id", "prompt"}`.
The results file gets one JSON line per item, appended and fsynced as each result comes in, so
after a crash it holds every result that was ever reported done, and at most a torn last line.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from agentqueue.errors import BatchInputError
from agentqueue.protocol.messages import AgentRequest, Usage, user_message

STATUSES = ("final", "failed", "timed_out", "cancelled")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,40}$")


@dataclass(slots=True)
class BatchItem:
    """One input line: its id, its session (None: a session of its own) and the request."""

    id: str
    session_id: str | None
    request: AgentRequest
    raw: dict[str, Any]  # the line as given, for score functions
    line: int


class ResultLine(msgspec.Struct):
    """One line of the results file; every key is always present (files written before `usage`
    existed still load)."""

    id: str
    session_id: str
    status: str
    text: str
    error: str | None
    latency_ms: float | None
    attempts: int
    usage: Usage | None = None  # the model tokens of the item's answer (None: no model called)


_line_decoder = msgspec.json.Decoder(ResultLine)
_line_encoder = msgspec.json.Encoder()


def batch_name(input_path: str | os.PathLike[str], output_path: str | os.PathLike[str]) -> str:
    """The default batch name: a hash of both absolute paths, so the same command resumes."""
    key = f"{Path(input_path).resolve()}\0{Path(output_path).resolve()}"
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def check_name(name: str) -> str:
    """A batch name usable in a queue name, or `BatchInputError` saying what is allowed."""
    if not _NAME.match(name):
        raise BatchInputError(
            f"batch name {name!r} must be 1-41 letters, digits or '-' (it names the reply queue)"
        )
    return name


def read_items(path: str | os.PathLike[str]) -> list[BatchItem]:
    """Every item of an input JSONL file; `BatchInputError` names the first bad line."""
    items: list[BatchItem] = []
    first_line: dict[str, int] = {}
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            item = parse_item(line, n, str(path))
            if item.id in first_line:
                raise BatchInputError(
                    f"{path}:{n}: item id {item.id!r} was already used on line"
                    f" {first_line[item.id]}; give every line a unique id"
                )
            first_line[item.id] = n
            items.append(item)
    return items


def parse_item(line: bytes, n: int, path: str = "<input>") -> BatchItem:
    """One input line as a `BatchItem`; `BatchInputError` names the line and the field."""
    where = f"{path}:{n}"
    try:
        raw = msgspec.json.decode(line)
    except msgspec.DecodeError as exc:
        raise BatchInputError(f"{where}: not a JSON object ({exc})") from None
    if not isinstance(raw, dict):
        raise BatchInputError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    item_id = raw.get("id")
    if item_id is None:
        item_id = f"line-{n}"
    elif isinstance(item_id, int | str) and not isinstance(item_id, bool):
        item_id = str(item_id)
    else:
        raise BatchInputError(f"{where}: `id` must be a string or an integer, got {item_id!r}")
    session = raw.get("session_id")
    if session is not None and not isinstance(session, str):
        raise BatchInputError(f"{where}: `session_id` must be a string, got {session!r}")
    if "input" in raw:
        try:
            request = msgspec.convert(raw, AgentRequest)
        except msgspec.ValidationError as exc:
            raise BatchInputError(f"{where}: not an agent request: {exc}") from None
    elif "prompt" in raw:
        prompt, agent = raw["prompt"], raw.get("agent")
        if not isinstance(prompt, str):
            raise BatchInputError(f"{where}: `prompt` must be a string, got {prompt!r}")
        if agent is not None and not isinstance(agent, str):
            raise BatchInputError(f"{where}: `agent` must be a string, got {agent!r}")
        request = AgentRequest(input=[user_message(prompt)], agent=agent)
    else:
        raise BatchInputError(
            f"{where}: needs `input` (an AgentScope Runtime request) or `prompt` (the short form)"
        )
    return BatchItem(id=item_id, session_id=session, request=request, raw=raw, line=n)


class ResultsFile:
    """The append-only results file: read what is there, then append fsynced lines."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._file: Any = None

    def load(self) -> dict[str, ResultLine]:
        """The results already written, by item id; cuts off a torn last line from a crash.

        Call it after `open()`, so no other run can be appending meanwhile.
        """
        if not self.path.exists():
            return {}
        data = self.path.read_bytes()
        complete = data.rfind(b"\n") + 1
        if complete < len(data):
            # The process died inside a write: that item was not reported done, so drop it.
            with open(self.path, "r+b") as f:
                f.truncate(complete)
                os.fsync(f.fileno())
        results: dict[str, ResultLine] = {}
        for n, line in enumerate(data[:complete].splitlines(), 1):
            if not line.strip():
                continue
            try:
                result = _line_decoder.decode(line)
            except msgspec.MsgspecError as exc:
                raise BatchInputError(
                    f"{self.path}:{n}: not a result line ({exc}); is this the results file of"
                    " another program? choose another -o"
                ) from None
            if result.id in results:
                raise BatchInputError(f"{self.path}:{n}: item {result.id!r} has two result lines")
            results[result.id] = result
        return results

    def open(self) -> None:
        """Open for appending (creating the file if needed) and lock it against a second run."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab")  # closed by close()
        try:
            # Two runs of one batch would split its replies and both append: refuse the second.
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.close()
            raise BatchInputError(
                f"another process is writing {self.path} (a run of the same batch?);"
                " wait for it or stop it first"
            ) from None

    def append(self, result: ResultLine) -> None:
        """Write one line and fsync it, so a result reported done survives a crash."""
        self._file.write(_line_encoder.encode(result) + b"\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        """Close the file; idempotent."""
        if self._file is not None:
            self._file.close()
            self._file = None
