"""The browser playground: sessions per connection, refused input, recording, a real browser."""
import asyncio
import json
import socket
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
import torch
import websockets

import world_models
from agents.playground import BEHAVIOR, PlaySession, check_playable, key_map, make_app, running
from agents.playground.session import KEY_PAIRS
from agents.playground.browser import NoBrowser, headless_chromium
from replay import EpisodeStore
from uncertainty import MotionStats, spearman
from world_models.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model():
    return world_models.make("dreamer4", "tiny").eval()


@pytest.fixture
def serve(model, tmp_path):
    """Start a playground on a free port: `serve(max_players=..., record=...)` -> its address
    (`host:port`), the store and the list of finished episodes."""
    with ExitStack() as servers:
        def start(max_players=4, record=False):
            store = EpisodeStore(tmp_path / "data") if record else None
            played = []
            app = make_app(lambda player: PlaySession(model, "toy-reach", motion=MotionStats({"toy-reach": 1.0}),
                                                      real=True, store=store, seed=player, player=player),
                           max_players=max_players, on_played=played.append)
            return servers.enter_context(running(app)), store, played

        yield start


async def connect(address):
    ws = await websockets.connect(f"ws://{address}/ws")
    hello = json.loads(await ws.recv())
    first = json.loads(await ws.recv())
    return ws, hello, first


async def ask(ws, msg) -> dict:
    await ws.send(msg if isinstance(msg, (str, bytes)) else json.dumps(msg))
    return json.loads(await ws.recv())


def test_each_player_has_its_own_episode_and_extra_players_are_refused(serve):
    address, _, played = serve(max_players=2)

    async def play():
        a, hello, first = await connect(address)
        b, _, _ = await connect(address)
        assert hello["action_dim"] == 2 and hello["signals"] == ["u_r", "u_s", "u_f"] and hello["real"]
        assert first["t"] == 0 and first["imagined"].startswith("data:image/png;base64,")
        for _ in range(3):
            out_a = await ask(a, {"type": "step", "action": [1, 0]})
        out_b = await ask(b, {"type": "step", "action": [0, -1]})
        assert (out_a["t"], out_b["t"]) == (3, 1)
        assert set(out_a["signals"]) == {"u_r", "u_s", "u_f"} and np.isfinite(out_a["psnr"])
        async with websockets.connect(f"ws://{address}/ws") as c:
            refused = json.loads(await c.recv())
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await c.recv()
        assert refused["type"] == "error" and "busy" in refused["message"] and closed.value.rcvd.code == 1013
        await b.close()
        await asyncio.sleep(0.5)
        again, _, _ = await connect(address)  # a freed place is taken again
        assert (await ask(a, {"type": "step", "action": [1, 0]}))["t"] == 4
        await again.close()
        await a.close()
        for _ in range(100):  # the server hears of the close a little later
            if len(played) == 2:
                break
            await asyncio.sleep(0.1)

    asyncio.run(play())
    assert sorted(p.steps for p in played) == [1, 4]
    (longer,) = [p for p in played if p.steps == 4]
    assert set(longer.psnr_rho) == {"u_r", "u_s", "u_f"}  # None where a series is constant (no NaN in JSON)
    assert all(r is None or -1 <= r <= 1 for r in longer.psnr_rho.values())


def test_bad_messages_get_one_clear_error_and_nothing_is_evaluated(serve):
    address, _, _ = serve()

    async def play():
        ws, _, _ = await connect(address)
        for msg, words in [("nope", "JSON objects"), (b'{"type": "reset"}', "must be text"), ({"type": "exec"}, "messages are"),
                           ({"type": "step", "action": [1]}, "list of 2 numbers"),
                           ({"type": "step", "action": ["__import__('os').system('x')", 1]}, "list of 2 numbers"),
                           ({"type": "step", "action": [True, 0]}, "list of 2 numbers"),
                           ('{"type": "step", "action": [NaN, 0]}', "finite"),
                           ({"type": "substeps", "value": 3}, "sample_steps must be one of [1, 2]")]:
            reply = await ask(ws, msg)
            assert reply["type"] == "error" and words in reply["message"], (msg, reply)
        assert (await ask(ws, {"type": "step", "action": [5, -5]}))["t"] == 1  # clipped to [-1, 1], still playing
        assert (await ask(ws, {"type": "substeps", "value": 1}))["substeps"] == 1
        reply = await ask(ws, "x" * 2000)
        assert reply["type"] == "error" and "over 1024 bytes" in reply["message"]
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd.code == 1009

    asyncio.run(play())


def test_imagination_alone_plays_to_the_episode_end_with_whale_gauges():
    whale = world_models.make("whale", "tiny").eval()
    session = PlaySession(whale, "toy-reach", real=False, seed=0)
    hello = session.hello()
    assert hello["signals"] == ["u_r", "u_s", "token_entropy"] and not hello["real"] and hello["substeps"] is None
    with pytest.raises(ValueError, match="call reset"):
        session.step(np.zeros(2))
    assert session.reset()["t"] == 0
    replies = [session.step(np.array([0.5, -0.5])) for _ in range(hello["episode_length"])]
    assert [r["done"] for r in replies] == [False] * (len(replies) - 1) + [True]
    assert all(r["real"] is None and r["psnr"] is None and np.isfinite(r["signals"]["token_entropy"]) for r in replies)
    with pytest.raises(ValueError, match="no Euler substeps"):
        session.set_substeps(1)
    played = session.finish()
    assert (played.steps, played.real_return, played.saved) == (50, None, None)
    session.close()
    with pytest.raises(ValueError, match="needs real=true"):
        PlaySession(whale, "toy-reach", real=False, store=EpisodeStore("unused"))
    with pytest.raises(ValueError, match="trained on"):
        check_playable(whale, "cup-catch", real=True, record=False)
    with pytest.raises(ValueError, match="pixel world model"):
        check_playable(world_models.make("ensemble", "tiny"), "toy-reach", real=True, record=False)
    assert len(key_map(6)) == 12 and {k["key"] for k in key_map(6)} == {k for pair in KEY_PAIRS for k in pair}
    with pytest.raises(ValueError, match="at most 6 action dims"):
        key_map(7)


def test_an_episodes_rho_is_the_spearman_of_what_the_player_saw():
    whale = world_models.make("whale", "tiny").eval()
    session = PlaySession(whale, "toy-reach", real=True, seed=1)
    session.reset()
    rng = np.random.default_rng(0)
    replies = [session.step(rng.uniform(-1, 1, 2)) for _ in range(12)]
    played = session.finish()
    session.close()
    psnr = torch.tensor([r["psnr"] for r in replies])
    expected = {name: spearman(torch.tensor([r["signals"][name] for r in replies]), psnr)
                for name in ("u_r", "u_s", "token_entropy")}
    assert played.psnr_rho.keys() == expected.keys()
    for name, rho in expected.items():
        assert played.psnr_rho[name] == (None if np.isnan(rho) else pytest.approx(rho, abs=1e-6)), name
    assert sum(r is not None for r in played.psnr_rho.values()) >= 1  # not all constant
    assert played.mean_psnr == pytest.approx(psnr.mean().item(), rel=1e-5)


def browser():
    try:
        return headless_chromium()
    except NoBrowser as missing:
        pytest.skip(str(missing))


def test_a_browser_plays_sees_frames_and_gauges_and_records_an_episode(serve, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser()
    address, store, played = serve(record=True)
    try:
        driver.get(f"http://{address}/")
        wait = WebDriverWait(driver, 30)

        def frames():
            return driver.execute_script("return window.mirage.frames")

        wait.until(lambda d: frames() >= 1)
        first = driver.find_element(By.ID, "imagined").get_attribute("src")
        assert driver.find_element(By.ID, "value-0").text == "–"
        body = driver.find_element(By.TAG_NAME, "body")
        for k in range(3):
            body.send_keys(Keys.ARROW_RIGHT)
            wait.until(lambda d, k=k: frames() >= k + 2)
        assert driver.find_element(By.ID, "t").text == "3"
        assert driver.find_element(By.ID, "imagined").get_attribute("src") != first
        for i in range(3):
            assert np.isfinite(float(driver.find_element(By.ID, f"value-{i}").text))
        assert driver.find_element(By.ID, "psnr").text.endswith("dB")
        assert len(driver.execute_script("return window.mirage.latencies")) == 3
        out = tmp_path / "runs" / "play" / "toy-reach" / "0"
        out.mkdir(parents=True)
        driver.save_screenshot(str(out / "playground.png"))
        body.send_keys("r")
        wait.until(lambda d: d.execute_script("return window.mirage.saved.length") == 1)
        assert driver.find_element(By.ID, "t").text == "0" and not driver.execute_script("return window.mirage.errors")
        assert "episode of 3 steps" in driver.find_element(By.ID, "status").text
        assert "ρ(signal, PSNR): u_r" in driver.find_element(By.ID, "status").text
    finally:
        driver.quit()
    (info,) = store.episodes(task="toy-reach", behavior=BEHAVIOR)
    episode = store.load(info)
    assert len(episode) == 3 and episode.behavior == BEHAVIOR and (episode.actions == [[1, 0]] * 3).all()
    assert played[0].saved == str(info.path)
    assert (out / "playground.png").stat().st_size > 10_000


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("play") / "ckpt"
    save_checkpoint(folder, model, scene_motion={"toy-reach": 1.0})
    return folder


@pytest.mark.parametrize("overrides, words", [
    (["checkpoint=/nonexistent"], "checkpoint: nothing loadable at /nonexistent"),
    (["checkpoint={ckpt}", "task=cup-catch"], "trained on ['toy-reach'], not cup-catch"),
    (["checkpoint={ckpt}", "port={busy}"], "port {busy} on 127.0.0.1 is not available"),
    (["checkpoint={ckpt}", "record=true", "real=false"], "needs real=true"),
])
def test_play_refuses_bad_input_in_one_line(overrides, words, checkpoint, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = [o.format(ckpt=checkpoint, busy=port) for o in overrides]
        run = subprocess.run([sys.executable, str(ROOT / "experiments" / "play.py"), *args, f"out={tmp_path / 'out'}"],
                             capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and words.format(busy=port) in lines[0], run.stderr
    assert not (tmp_path / "out").exists()
