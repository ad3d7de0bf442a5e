"""`shira demo --serve` end to end: the real page in headless Chromium, on the real runtimes."""
import base64
import io
import shutil
import threading

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # exports the style net and drives Chromium


def _chrome():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1000,1100"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=opts)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from shira_demos.web_demo import serve

    box = {}
    ready = threading.Event()
    t = threading.Thread(target=serve, args=(tmp_path_factory.mktemp("web"), 0, 2),
                         kwargs={"log": lambda *a: None, "ready": lambda s: (box.update(s=s), ready.set())}, daemon=True)
    t.start()
    assert ready.wait(300), "the demo server did not start"
    yield f"http://127.0.0.1:{box['s'].server_address[1]}/"
    box["s"].shutdown()


def _pixels(data_url: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))), dtype=np.int16)


@pytest.mark.parametrize("runtime", ["onnxruntime", "executorch"])
def test_click_every_style_then_back_to_base(server, runtime, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    d = _chrome()
    try:
        d.get(server)
        wait = WebDriverWait(d, 60)
        wait.until(lambda d: "switch" in d.find_element(By.ID, "status").text)
        d.find_element(By.CSS_SELECTOR, f"input[value={runtime}]").click()

        def results():
            return d.execute_script("return +document.body.dataset.results || 0")

        def press(button_id):
            n = results()
            d.find_element(By.ID, button_id).click()
            wait.until(lambda d: results() > n)
            assert d.find_element(By.ID, "status").text.startswith(runtime)
            return d.find_element(By.ID, "output").get_attribute("src")

        base = press("btn-base")
        styles = [b.text for b in d.find_elements(By.CSS_SELECTOR, "#styles button") if b.get_attribute("id") != "btn-base"]
        assert len(styles) >= 4
        for s in styles:
            img = press(f"btn-{s}")
            diff = np.abs(_pixels(img) - _pixels(base)).mean()
            assert diff > 1.0, f"{s} on {runtime}: the image barely changed ({diff:.2f} grey levels)"
            status = d.find_element(By.ID, "status").text
            assert "switch" in status and "ms" in status and "inference" in status, status
            d.save_screenshot(str(tmp_path / f"{runtime}-{s}.png"))
        mixed = press("btn-mix")
        assert np.abs(_pixels(mixed) - _pixels(base)).mean() > 1.0
        again = press("btn-base")
        assert np.array_equal(_pixels(again), _pixels(base)), "back to base must give the base output again"
        assert (tmp_path / f"{runtime}-{styles[0]}.png").stat().st_size > 5000
    finally:
        d.quit()


def test_upload_own_photo_and_bad_upload(server, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    good = tmp_path / "mine.png"
    Image.fromarray((np.indices((300, 200)).sum(0) % 255).astype(np.uint8)).convert("RGB").save(good)
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is not an image")
    d = _chrome()
    try:
        d.get(server)
        wait = WebDriverWait(d, 60)
        wait.until(lambda d: "switch" in d.find_element(By.ID, "status").text)
        photo0 = d.find_element(By.ID, "photo").get_attribute("src")
        d.find_element(By.ID, "upload").send_keys(str(good))
        wait.until(lambda d: d.find_element(By.ID, "photo").get_attribute("src") != photo0)
        d.find_element(By.ID, "upload").send_keys(str(bad))
        wait.until(lambda d: "not an image" in d.find_element(By.ID, "status").text)
        assert d.find_element(By.ID, "status").get_attribute("class") == "err"
    finally:
        d.quit()
