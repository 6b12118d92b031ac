"""A real server subprocess with two users and seeded resources, for the proof suites."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.serverproc import ServerProcess, base_env, call, create_user

SESSIONS = "/api/campaigns/ai-chat-sessions"


@dataclass
class Seeded:
    campaign_id: str
    node_id: str
    session_id: str


@dataclass
class Live:
    """A running server and what the suites need to talk to it."""

    server: ServerProcess
    db: Path
    token_a: str
    token_b: str
    seeded_a: Seeded
    seeded_b: Seeded
    log_path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return self.server.base_url

    def call(self, token: str | None, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        return call(self.base_url, token, method, path, body, **kw)


def seed(base: str, token: str) -> Seeded:
    status, campaign, _ = call(base, token, "POST", "/api/campaigns", {"name": "proof"})
    assert status == 201, campaign
    cid = campaign["campaign"]["id"]
    status, node, _ = call(base, token, "POST", f"/api/campaigns/{cid}/nodes", {"name": "intro"})
    assert status == 201, node
    nid = node["node"]["id"]
    status, created, _ = call(base, token, "POST", SESSIONS, {"campaign_id": cid, "node_id": nid})
    assert status == 201, created
    return Seeded(cid, nid, created["session"]["id"])


@contextmanager
def live_server(tmp: Path, *, db_dir: Path | None = None, **env: str) -> Iterator[Live]:
    """Start a server on a fresh SQLite file with users alice and bob, each with resources."""
    db = (db_dir or tmp) / "live.db"
    store = ["--db", str(db)]
    environment = base_env(**env)
    token_a = create_user(store, "alice")
    token_b = create_user(store, "bob")
    log_path = tmp / "server.log"
    server = ServerProcess(store, env=environment, log_path=log_path).start()
    try:
        live = Live(
            server,
            db,
            token_a,
            token_b,
            seed(server.base_url, token_a),
            seed(server.base_url, token_b),
            log_path,
        )
        yield live
    finally:
        server.stop()
