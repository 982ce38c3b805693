"""Run code in a real kernel of a running session, as a user's notebook would (REST + websocket)."""

import asyncio
import json
import uuid

import httpx
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect


async def _execute(ws_url: str, token: str, code: str, timeout: float) -> str:
    request = HTTPRequest(ws_url, headers={"Authorization": f"token {token}"})
    conn = await websocket_connect(request)
    msg_id = uuid.uuid4().hex
    conn.write_message(
        json.dumps(
            {
                "header": {
                    "msg_id": msg_id,
                    "username": "test",
                    "session": uuid.uuid4().hex,
                    "msg_type": "execute_request",
                    "version": "5.3",
                },
                "parent_header": {},
                "metadata": {},
                "content": {"code": code, "silent": False, "store_history": False},
                "channel": "shell",
            }
        )
    )
    out: list[str] = []
    async with asyncio.timeout(timeout):
        while True:
            raw = await conn.read_message()
            if raw is None:
                raise RuntimeError("the kernel's websocket closed")
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out.append(content["text"])
            elif kind == "error":
                out.append("\n".join(content["traceback"]))
            elif kind == "status" and content["execution_state"] == "idle":
                break
    conn.close()
    return "".join(out)


def run_code(session_url: str, token: str, code: str, timeout: float = 120) -> str:
    """Start a kernel in the session at `session_url`, run `code`, return what it printed."""
    headers = {"Authorization": f"token {token}"}
    r = httpx.post(f"{session_url}/api/kernels", json={"name": "python3"}, headers=headers)
    r.raise_for_status()
    kernel = r.json()["id"]
    ws_url = session_url.replace("http", "ws", 1) + f"/api/kernels/{kernel}/channels"
    try:
        return asyncio.run(_execute(ws_url, token, code, timeout))
    finally:
        httpx.delete(f"{session_url}/api/kernels/{kernel}", headers=headers)
