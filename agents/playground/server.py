"""The playground's web app: one static page and a WebSocket per player.

Messages from the page are JSON objects of at most `max_message` bytes:
`{"type": "step", "action": [A numbers]}`, `{"type": "reset"}` and
`{"type": "substeps", "value": k}`. Nothing the page sends is evaluated. Each connection
owns one `PlaySession`; the model is shared, and every session's work runs on one worker
thread, one call at a time (MuJoCo renders only on the thread that made its GL context).
"""
from __future__ import annotations

import asyncio
import gc
import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterator

import uvicorn
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from agents.playground.session import Played, PlaySession, action_from

PAGE = (Path(__file__).parent / "static" / "index.html").read_text()
BUSY, TOO_BIG = 1013, 1009  # WebSocket close codes: try again later, message too big
MAX_MESSAGE = 1024  # bytes; a step message is under 100


def make_app(new_session: Callable[[int], PlaySession], *, max_players: int = 4, max_message: int = MAX_MESSAGE,
             on_played: Callable[[Played], None] = lambda played: None) -> Starlette:
    """The ASGI app. `new_session(player)` builds the session of the player-th connection;
    at most `max_players` play at once; `on_played` hears of every finished episode."""
    worker = ThreadPoolExecutor(1, thread_name_prefix="play")  # MuJoCo's GL context lives on one thread
    players = {"now": 0, "total": 0}

    async def on_worker(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(worker, fn, *args)

    async def page(request):
        return HTMLResponse(PAGE)

    async def play(ws: WebSocket) -> None:
        await ws.accept()
        if players["now"] >= max_players:
            await ws.send_json({"type": "error", "message": f"busy: {max_players} players are connected already"})
            await ws.close(BUSY)
            return
        players["now"] += 1
        players["total"] += 1
        session = None
        try:
            session = await on_worker(new_session, players["total"] - 1)
            await ws.send_json(session.hello())
            await ws.send_json(await on_worker(restart, session))
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                if text is None:
                    await ws.send_json({"type": "error", "message": "messages must be text: JSON objects"})
                    continue
                if len(text.encode()) > max_message:
                    await ws.send_json({"type": "error", "message": f"message over {max_message} bytes"})
                    await ws.close(TOO_BIG)
                    return
                try:
                    reply = await handle(session, text)
                except ValueError as err:
                    reply = {"type": "error", "message": str(err)}
                await ws.send_json(reply)
        except WebSocketDisconnect:
            pass
        finally:
            players["now"] -= 1
            if session is not None:
                await on_worker(close, session)

    async def handle(session: PlaySession, text: str) -> dict:
        try:
            msg = json.loads(text)
        except json.JSONDecodeError:
            raise ValueError("messages must be JSON objects") from None
        if not isinstance(msg, dict) or msg.get("type") not in ("step", "reset", "substeps"):
            raise ValueError('messages are {"type": "step" | "reset" | "substeps", ...}')
        if msg["type"] == "substeps":
            k = msg.get("value")
            if not isinstance(k, int) or isinstance(k, bool):
                raise ValueError("substeps takes an integer value")
            return await on_worker(session.set_substeps, k)
        if msg["type"] == "reset":
            return await on_worker(restart, session)
        reply = await on_worker(session.step, action_from(msg.get("action"), session.spec.action_dim))
        if reply["done"]:
            reply["next"] = await on_worker(restart, session)
        return reply

    def report(played: Played | None) -> None:
        if played is not None and played.steps:
            on_played(played)

    def close(session: PlaySession) -> None:
        report(session.finish())
        session.close()
        gc.collect()  # free MuJoCo's GL contexts here, not on a thread where they are not current

    def restart(session: PlaySession) -> dict:
        played = session.finish()
        report(played)
        frame = session.reset()
        gc.collect()
        frame["played"] = None if played is None else asdict(played)
        return frame

    @asynccontextmanager
    async def lifespan(app):
        yield
        worker.shutdown(wait=True)  # after the last session closed its environment

    return Starlette(routes=[Route("/", page), WebSocketRoute("/ws", play)], lifespan=lifespan)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on `host:port` (port 0: any free port); one clear `ValueError`
    when the port is taken."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ValueError(f"port {port} on {host} is not available ({err.strerror}): pick another with port=...") from None
    sock.listen(16)
    return sock


def server(app: Starlette, sock: socket.socket, max_message: int = MAX_MESSAGE) -> tuple[uvicorn.Server, Callable[[], None]]:
    """A uvicorn server for `app` on a bound socket, and the call that runs it (blocking).
    Frames over 4 x `max_message` are cut off by the transport; the app refuses the rest."""
    config = uvicorn.Config(app, log_level="warning", ws="websockets-sansio", ws_max_size=4 * max_message)
    srv = uvicorn.Server(config)
    return srv, lambda: srv.run(sockets=[sock])


@contextmanager
def running(app: Starlette, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve `app` from a background thread while the block runs; yields `host:port`."""
    sock = bind(host, port)
    srv, run = server(app, sock)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield f"{host}:{sock.getsockname()[1]}"
    finally:
        srv.should_exit = True
        thread.join(10)
