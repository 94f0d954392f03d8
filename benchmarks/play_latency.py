"""Playground latency: ms from a key press to its frame on the page, in headless Chromium.

    python benchmarks/play_latency.py [--task cup-catch] [--presses 60] [--checkpoint <ckpt>]

Serves the playground (real environment beside the model) and presses keys in a real
browser, one press after the last frame showed. The page times each press from keydown
to the decoded imagined frame; the server times its `step` (model, environment, PNGs).
Without `--checkpoint` it plays untrained small-preset models of both families (latency
does not depend on the weights); with one, that model. Prints the median and p95 per model
and Euler substep count, and saves a screenshot of the page per model under `--out`.
"""
import argparse
import time
from pathlib import Path

import numpy as np
import torch
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

import envs
import world_models
from agents.playground import PlaySession, key_map, make_app, motion_of, running
from agents.playground.browser import headless_chromium

SELENIUM_KEYS = {"ArrowRight": Keys.ARROW_RIGHT, "ArrowLeft": Keys.ARROW_LEFT, "ArrowUp": Keys.ARROW_UP,
                 "ArrowDown": Keys.ARROW_DOWN}


class TimedSession(PlaySession):
    """A `PlaySession` that records how long each step takes on the server (ms)."""

    times: list[float] = []

    def step(self, action):
        t0 = time.perf_counter()
        reply = super().step(action)
        self.times.append(1e3 * (time.perf_counter() - t0))
        return reply


def press(driver, keys: list[str], presses: int) -> list[float]:
    """Press `presses` keys in turn, each after the previous frame showed; the page's ms."""
    start = len(driver.execute_script("return window.mirage.latencies"))
    wait = WebDriverWait(driver, 30)
    for k in range(presses):
        ActionChains(driver).send_keys(keys[k % len(keys)]).perform()
        wait.until(lambda d, n=start + k + 1: len(d.execute_script("return window.mirage.latencies")) >= n)
    return driver.execute_script("return window.mirage.latencies")[start:]


def set_substeps(driver, index: int, value: int) -> None:
    driver.execute_script("const s = document.getElementById('substeps'); s.value = arguments[0];"
                          "s.dispatchEvent(new Event('input'));", index)
    WebDriverWait(driver, 30).until(lambda d: d.find_element("id", "substeps-value").text == str(value))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="cup-catch")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--presses", type=int, default=60)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="screenshots go here (default runs/play/<task>/benchmark)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out = Path(args.out or f"runs/play/{args.task}/benchmark")
    out.mkdir(parents=True, exist_ok=True)
    if args.checkpoint:
        models = [(world_models.load(args.checkpoint), motion_of(Path(args.checkpoint), args.task))]
    else:
        models = [(world_models.make(name, "small", tasks=(args.task,)).eval(), None) for name in ("dreamer4", "whale")]
    print(f"{'model':<10}{'substeps':>9}{'page median':>13}{'page p95':>10}{'server median':>15}{'server p95':>12}  (ms)")
    for model, motion in models:
        app = make_app(lambda player, model=model, motion=motion: TimedSession(
            model, args.task, motion=motion, real=True, seed=player, player=player))
        with running(app) as address:
            driver = headless_chromium()
            try:
                driver.get(f"http://{address}/")
                WebDriverWait(driver, 60).until(lambda d: d.execute_script("return window.mirage.frames") >= 1)
                keys = [SELENIUM_KEYS.get(k["key"], k["key"]) for k in key_map(envs.task_spec(args.task).action_dim)]
                choices = model.sample_step_choices() if hasattr(model, "sample_step_choices") else [None]
                for i, k in enumerate(choices):
                    if k is not None:
                        set_substeps(driver, i, k)
                    press(driver, keys, 5)  # warm-up
                    TimedSession.times.clear()
                    page = press(driver, keys, args.presses)
                    server_ms = np.array(TimedSession.times)
                    print(f"{model.name:<10}{k or '-':>9}{np.median(page):>13.1f}{np.percentile(page, 95):>10.1f}"
                          f"{np.median(server_ms):>15.1f}{np.percentile(server_ms, 95):>12.1f}", flush=True)
                driver.save_screenshot(str(out / f"playground_{model.name}.png"))
            finally:
                driver.quit()
    print(f"screenshots: {out}/playground_<model>.png")


if __name__ == "__main__":
    main()
