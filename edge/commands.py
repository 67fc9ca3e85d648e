"""Remote commands on <prefix>/<line>/set (off unless `commands.enabled`). The only command is a reload of a
signed bundle inside `commands.bundle_dir`; every command gets an answer on <prefix>/<line>/set/result
(accepted / refused with the reason / applied / failed). Runs on the network thread: nothing may raise."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["ReloadCommand", "Commands"]

log = logging.getLogger("lineside")


class ReloadCommand(BaseModel):
    """`{"command": "reload", "id": "...", "bundle": "/opt/lineside/bundles/x"}` on <prefix>/<line>/set."""

    model_config = ConfigDict(extra="forbid")
    command: str = Field(pattern="^reload$")
    id: str = Field(min_length=1, max_length=128)
    bundle: str | None = Field(None, max_length=4096)


class Commands:
    """Validates commands and hands accepted reloads to the frame loop through `request(path, command_id)`."""

    def __init__(self, bundle_dir: Path | None, trusted: Callable[[], bool],
                 request: Callable[[Path | None, str], None], send: Callable[[dict[str, Any]], None]) -> None:
        self.bundle_dir = bundle_dir
        self.trusted = trusted
        self.request = request
        self.send = send

    def answer(self, cmd_id: str | None, result: str, reason: str | None = None) -> None:
        self.send({"id": cmd_id, "result": result, "reason": reason, "ts": time.time()})

    def _refuse(self, topic: str, cmd_id: str | None, reason: str) -> None:
        log.warning("command on %s refused: %s", topic, reason)
        self.answer(cmd_id, "refused", reason)

    def on_message(self, msg: Any, ack: Callable[[], None]) -> None:
        ack()
        cmd_id = None
        try:
            body = json.loads(msg.payload)
            cmd_id = str(body.get("id"))[:128] if isinstance(body, dict) and body.get("id") is not None else None
            cmd = ReloadCommand.model_validate(body)
        except ValidationError as err:
            e = err.errors()[0]
            loc = ".".join(str(x) for x in e["loc"]) or "payload"
            self._refuse(msg.topic, cmd_id, f"malformed command: {loc}: {e['msg']}")
            return
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as err:
            self._refuse(msg.topic, cmd_id, f"malformed command: not a JSON object ({str(err)[:120]})")
            return
        if msg.retain:
            self._refuse(msg.topic, cmd.id, "retained commands are ignored; publish with retain=false")
            return
        if not self.trusted():
            self._refuse(msg.topic, cmd.id, "remote reload needs trust.keys in the daemon config (signed bundles)")
            return
        path: Path | None = None
        if cmd.bundle is not None:
            root = self.bundle_dir
            p = Path(cmd.bundle)
            if root is None or not p.is_absolute() or not p.resolve().is_relative_to(root.resolve()):
                self._refuse(msg.topic, cmd.id, f"bundle must be a folder inside commands.bundle_dir ({root})")
                return
            path = p.resolve()
        self.request(path, cmd.id)
        self.answer(cmd.id, "accepted")
