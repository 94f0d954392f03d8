"""Headless Chromium through selenium, for the playground's tests and latency benchmark."""
from __future__ import annotations

import shutil

INSTALL = "apt-get install chromium chromium-driver && pip install selenium"


class NoBrowser(RuntimeError):
    """Chromium, its driver or selenium is not installed."""


def headless_chromium(width: int = 1280, height: int = 900):
    """A selenium `webdriver.Chrome` on the system Chromium (nothing is downloaded)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        raise NoBrowser(f"selenium is missing: {INSTALL}") from None
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        raise NoBrowser(f"Chromium is missing: {INSTALL}")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(driver))
