"""The web page of serve.py in a real browser (headless Chromium through Selenium)."""

import os
from pathlib import Path

import pytest

from product_cnn.inference.predictor import Predictor
from tests.serve.server import KEY, NO_UNKNOWN, Server, post_file


def _browser():
    """Headless Chromium through Selenium, or a skip that says what is missing."""
    import shutil

    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the dev extra)")
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("needs Chromium and chromedriver (apt-get install chromium chromium-driver; "
                    ".ci/run installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,800"):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=driver)
    return webdriver.Chrome(options=options, service=service)


def _drop_in_browser(url: str, photo: Path, shot: Path, key: str | None = KEY) -> tuple[str, int]:
    """Drop ``photo`` on the page in a real browser; (the category line shown, bars shown, nearest
    training photos shown, heatmaps shown)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    browser = _browser()
    try:
        browser.get(f"{url}/")
        if key:
            browser.find_element(By.ID, "key").send_keys(key)
        chooser = browser.find_element(By.ID, "files")
        browser.execute_script("arguments[0].hidden = false", chooser)
        chooser.send_keys(str(photo))
        answered = expected_conditions.presence_of_element_located((By.CLASS_NAME, "category"))
        WebDriverWait(browser, 60).until(answered)
        shown = browser.find_element(By.CLASS_NAME, "category").text
        bars = browser.find_elements(By.CLASS_NAME, "bar")
        def loaded(b) -> bool:  # the nearest training photos' thumbnails and the heatmap, if any
            return all((i.get_attribute("src") or "").startswith("blob:")
                       for i in b.find_elements(By.CSS_SELECTOR, ".near img")) and all(
                b.execute_script("return arguments[0].complete", i)
                for i in b.find_elements(By.CSS_SELECTOR, "img.heatmap"))

        WebDriverWait(browser, 30).until(loaded)
        nearest = browser.find_elements(By.CSS_SELECTOR, ".near figure")
        heatmaps = [i for i in browser.find_elements(By.CSS_SELECTOR, "img.heatmap")
                    if (i.get_attribute("src") or "").startswith("data:image/png;base64,")
                    and browser.execute_script("return arguments[0].naturalWidth", i) > 0]
        browser.save_screenshot(str(shot))
        if os.environ.get("PRODUCT_CNN_SCREENSHOT"):  # how docs/serve.png was made
            browser.save_screenshot(os.environ["PRODUCT_CNN_SCREENSHOT"])
    finally:
        browser.quit()
    return shown, len(bars), len(nearest), len(heatmaps)


def test_the_web_page_classifies_a_dropped_photo_in_a_real_browser(server, photos, tmp_path):
    expected = post_file(server.url, photos[0]).json()
    shown, bars, nearest, heatmaps = _drop_in_browser(server.url, photos[0], tmp_path / "page.png")
    held = "needs review: " + ("none of these categories" if expected.get("unknown") else "not sure")
    assert shown.startswith(expected["category"] + " (" if expected["category"] else held) and bars == 3
    assert nearest == 3 and heatmaps == 1  # the nearest with their thumbnails; where the model looked
    assert (tmp_path / "page.png").stat().st_size > 5000


@pytest.mark.slow  # a second server and browser (about 30 s); CI runs the slow tests too
def test_the_web_page_marks_a_held_back_photo_needs_review(tiny_run, photos, tmp_path):
    _browser().quit()  # skips here, before a server starts, when there is no browser
    want = Predictor.from_checkpoint(tiny_run["best"], device="cpu", gate=NO_UNKNOWN).predict(photos)
    low = min(zip(want, photos, strict=True), key=lambda x: x[0].confidence)
    assert low[0].confidence < 0.999
    running = Server(tmp_path, f"ckpt_path={tiny_run['best']}", "device=cpu", "min_confidence=0.999",
                     "unknown=false")
    try:
        shown, bars, _, _ = _drop_in_browser(running.url, low[1], tmp_path / "page.png", key=None)
    finally:
        running.stop()
    assert shown == "needs review: not sure" and bars == 3  # the top-k still shown
