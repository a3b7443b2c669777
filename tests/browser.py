"""Headless Chromium for the browser tests: Debian's chromium and chromedriver, driven by
selenium. CI must have them (.ci/run installs them); elsewhere the tests skip."""

import os
import shutil
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


def browser(width=1366, height=900):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium and chromium-driver (see .ci/run)")
        pytest.skip("needs chromium and chromedriver: apt-get install chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    from selenium.webdriver.chrome.service import Service
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def screenshot(driver, name: str, full_page: bool = True) -> Path:
    """Save a screenshot as a test artifact (the whole page, up to 6000 px tall)."""
    ARTIFACTS.mkdir(exist_ok=True)
    if full_page:
        height = driver.execute_script("return document.documentElement.scrollHeight")
        width = driver.execute_script("return window.outerWidth")
        driver.set_window_size(width, min(height + 140, 6000))
    path = ARTIFACTS / name
    assert driver.save_screenshot(str(path))
    return path
