"""report.html: self-contained, and it renders in a real headless browser without console errors."""
import re
import shutil

import numpy as np
import pytest

from pipeline.html_report import write_html_report
from pipeline.report import plot_metrics, plot_predictions

ROWS = [
    {"iteration": 0, "model": "source-only", "dice_lv": 0.8, "dice_myo": 0.7, "dice_mean": 0.75, "validity_pct": 60.0,
     "failed_myo_thickness": 30.0, "failed_lv_one_piece": 4.0},
    {"iteration": "baseline", "model": "TENT", "dice_mean": 0.85, "validity_pct": 80.0, "failed_myo_thickness": 20.0},
    {"iteration": 1, "model": "RL4Seg", "dice_lv": 0.9, "dice_myo": 0.8, "dice_mean": 0.85, "validity_pct": 90.0,
     "ece_after": 0.02, "reward_ece": 0.05, "failed_myo_thickness": 10.0},
    {"iteration": "selected", "model": "RL4Seg selected", "dice_mean": 0.85, "validity_pct": 90.0,
     "selected_iteration": 1},
]


@pytest.fixture()
def run_dir(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.random((3, 32, 32)).astype(np.float32)
    preds = rng.integers(0, 3, (3, 32, 32))
    plot_metrics(ROWS, tmp_path / "metrics.png")
    for name in ("predictions_iter_000", "predictions_iter_001", "cases_iter_001"):
        plot_predictions(images, preds, rng.random((3, 32, 32)), tmp_path / f"{name}.png", labels=preds, title=name)
    shutil.copy(tmp_path / "metrics.png", tmp_path / "reliability_iter_001.png")
    write_html_report(tmp_path, ROWS, "seed: 0\nppo: {iterations: 1}\n")
    return tmp_path


def test_the_page_is_self_contained(run_dir):
    page = (run_dir / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page and "http://" not in page and "https://" not in page  # nothing fetched
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) == 5
    for text in ("RL4Seg selected", "Dice LV+MYO", "myo_thickness", "lv_one_piece", "ppo: {iterations: 1}",
                 "worst, median and best", "reliability"):
        assert text in page, text
    assert page.count('<tr class="selected">') == 1


def _chrome():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the test extra")
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them with apt-get; "
                    "without root they cannot be)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1300,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    from selenium.webdriver.chrome.service import Service

    return webdriver.Chrome(options=options, service=Service(driver))


def test_the_page_renders_in_a_headless_browser(run_dir):
    browser = _chrome()
    try:
        browser.get((run_dir / "report.html").as_uri())
        assert browser.title == "RL4Seg run report"
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        tables = browser.find_elements("tag name", "table")
        assert len(tables) == 2 and "RL4Seg selected" in tables[0].text
        images = browser.find_elements("tag name", "img")
        assert len(images) == 5
        # every embedded image decoded and has a size on the page
        assert all(browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img)
                   for img in images)
        assert all(img.size["width"] > 100 for img in images)
    finally:
        browser.quit()
