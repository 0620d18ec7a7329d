"""The web page in a real browser: Debian's Chromium, headless, driven by Selenium through chromedriver.

It loads the page, runs a text-to-image job and then an inpainting job through the form (the mask painted
with the mouse on the picture), sees their progress in the queue and their pictures in the gallery, and
saves screenshots (into $SFUMATO_SCREENSHOTS when set, else the test's temporary folder; their paths are
printed). A second test runs a Stable Diffusion ControlNet job with a registered ControlNet and depth model
(tiny random folders) and sees a malformed weighted prompt refused with its position marked. Without
Chromium the tests are skipped, saying so; where it must run (CI sets
SFUMATO_REQUIRE_BROWSER=1) a missing browser fails it instead.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from ..image.test_depth import dpt_folder  # noqa: F401 - a tiny depth-estimation model folder (module fixture)
from .test_controlnet import folders  # noqa: F401 - tiny Stable Diffusion and ControlNet folders (module fixture)

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# as the machine's own notes say: no first-run work and no background connections on a closed network
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,1150", "--hide-scrollbars", "--force-device-scale-factor=1"]


def _missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} is not installed (Debian packages chromium and chromium-driver; .ci/run installs them)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (the test extra: pip install -e '.[test]')"
    return None


@pytest.fixture
def browser(tmp_path):
    reason = _missing()
    if reason:
        if os.environ.get("SFUMATO_REQUIRE_BROWSER", "") not in ("", "0"):
            pytest.fail(f"the browser test must run here (SFUMATO_REQUIRE_BROWSER is set), but {reason}")
        pytest.skip(f"no browser to test the web page in: {reason}")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="sfumato-chromium-")
    for flag in FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def shots(tmp_path):
    folder = Path(os.environ.get("SFUMATO_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    saved = []

    def shoot(driver, name: str) -> Path:
        path = folder / f"{name}.png"
        assert driver.save_screenshot(str(path)), f"no screenshot {path}"
        saved.append(path)
        return path

    yield shoot
    print("\nscreenshots:\n" + "\n".join(f"  {path}" for path in saved))


def _until(condition, timeout: float, what: str, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(every)


def _type(driver, element_id: str, text: str) -> None:
    element = driver.find_element("id", element_id)
    element.clear()
    element.send_keys(text)


def _texts(driver, selector: str) -> list[str]:
    # read in one script: the page redraws its lists as progress arrives, so held elements go stale
    return driver.execute_script(f"return Array.from(document.querySelectorAll({selector!r})).map(e => e.innerText)")


def _cards(driver) -> list[str]:
    return _texts(driver, ".gallery .card")


def _watch_queue(driver, until, timeout: float) -> list[str]:
    """The queue's state lines as they change (the page's live progress), until ``until()`` holds."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, f"timed out; the queue showed {seen}"
        for line in _texts(driver, "#queue .job .detail"):
            if not seen or seen[-1] != line:
                seen.append(" ".join(line.split()))
        time.sleep(0.03)
    return seen


def test_text_to_image_then_inpainting_through_the_page(browser, live, shots):
    from selenium.webdriver.common.action_chains import ActionChains

    driver = browser
    driver.get(live.url + "/")
    _until(lambda: driver.find_elements("css selector", "#model option"), 30, "the model list")
    assert "built-in demo model knows only" in driver.find_element("id", "model-note").text

    # 1. text to image, two pictures; the queue shows the job's progress
    _type(driver, "prompt", "a red circle on a blue background")
    _type(driver, "steps", "40")
    _type(driver, "prior_steps", "6")
    _type(driver, "seed", "3")
    _type(driver, "num", "2")
    driver.find_element("id", "submit").click()
    seen = _watch_queue(driver, lambda: len(_cards(driver)) >= 2, 240)
    assert any("denoising" in line and "%" in line for line in seen), seen
    assert any("picture 2/2" in line for line in seen), seen
    assert driver.find_element("id", "message").text.startswith("Queued")
    cards = _cards(driver)
    assert all("a red circle on a blue background" in card for card in cards)
    assert {"seed 3 · 64x64", "seed 4 · 64x64"} <= {card.split("\n")[-1] for card in cards}
    loaded = driver.execute_script("return Array.from(document.querySelectorAll('.gallery img')).map(i => i.naturalWidth)")
    assert loaded and all(width == 64 for width in loaded)
    shots(driver, "serve-text2image")

    # 2. a picture's parameters, then "use as input"
    driver.find_element("css selector", ".gallery .card").click()
    _until(lambda: driver.find_element("id", "details").is_displayed(), 10, "the details dialog")
    parameters = driver.find_element("id", "details-params").text
    assert "seed" in parameters and "builtin:decoder" in parameters and "DDPMScheduler" in parameters
    shots(driver, "serve-details")
    driver.find_element("id", "use-input").click()
    driver.find_element("css selector", "[data-workflow=inpaint]").click()
    _until(lambda: driver.find_element("id", "image-stack").is_displayed(), 10, "the picture to paint on")

    # 3. inpainting: paint the mask over the circle with the mouse, then generate
    canvas = driver.find_element("id", "mask-canvas")
    width, height = canvas.size["width"], canvas.size["height"]
    stroke = ActionChains(driver).move_to_element_with_offset(canvas, -width // 4, -height // 4).click_and_hold()
    for row in range(6):  # back and forth over the middle of the picture
        stroke = stroke.move_by_offset(width // 2 if row % 2 == 0 else -width // 2, 0).move_by_offset(0, height // 12)
    stroke.release().perform()
    painted = driver.execute_script("""
        const c = document.getElementById('mask-canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n;""")
    assert painted > 100, painted
    _type(driver, "prompt", "a white triangle on a blue background")
    _type(driver, "steps", "60")
    _type(driver, "num", "1")
    driver.find_element("id", "submit").click()
    _until(lambda: "denoising" in " ".join(_texts(driver, "#queue .job")), 120, "the inpainting job's progress")
    driver.execute_script("document.querySelector('.form-panel').scrollTop = 0")
    shots(driver, "serve-inpaint-running")
    _watch_queue(driver, lambda: any("triangle" in card for card in _cards(driver)), 240)
    shots(driver, "serve-inpaint-done")

    # the page's jobs are this browser's: the API, asked as the same client, has the inpainting record
    client_id = driver.execute_script("return localStorage.getItem('sfumato-client')")
    jobs = httpx.get(f"{live.url}/api/jobs", headers={"X-Sfumato-Client": client_id}).json()["jobs"]
    newest = httpx.get(f"{live.url}{jobs[0]['url']}", headers={"X-Sfumato-Client": client_id}).json()
    record = newest["images"][0]["record"]
    assert record["task"] == "inpaint" and record["prompt"] == "a white triangle on a blue background"
    assert record["image"].endswith("/0.png") and set(record["input_sha256"]) == {"image", "mask"}
    errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, json.dumps(errors, indent=1)


def test_stable_diffusion_controlnet_and_prompt_weighting_through_the_page(
        browser, shots, folders, dpt_folder, tmp_path):  # noqa: F811
    """A server with a tiny Stable Diffusion model and a registered ControlNet and depth model: the ControlNet
    workflow offers them by name, a malformed prompt is refused with its position marked in the prompt box, and
    the job runs with the registered folders in its record."""
    import numpy as np
    import PIL.Image

    from sfumato.serve.config import ServeConfig

    from .helpers import LiveServer, free_port

    server = LiveServer(ServeConfig(port=free_port(), data=tmp_path / "data", models=[folders["sd"]],
                                    controlnets={"depth": folders["controlnet"]},
                                    depth_models={"dpt": str(dpt_folder)})).start()
    try:
        driver = browser
        driver.get(server.url + "/")
        _until(lambda: driver.find_elements("css selector", "#model option"), 30, "the model list")
        assert driver.find_element("id", "weighting").is_selected()
        assert "(word:1.3)" in driver.find_element("id", "syntax-hint").text
        assert not driver.find_element("id", "controlnet-row").is_displayed()  # text to image: no ControlNet
        driver.find_element("css selector", "[data-workflow=controlnet]").click()
        _until(lambda: driver.find_element("id", "controlnet-row").is_displayed(), 10, "the ControlNet choice")
        assert _texts(driver, "#controlnet option") == ["depth"]
        assert _texts(driver, "#depth_model option")[1:] == ["dpt (dpt)"]
        photo = tmp_path / "photo.png"
        PIL.Image.fromarray(np.random.default_rng(4).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(photo)
        driver.find_element("id", "hint-file").send_keys(str(photo))
        _until(lambda: driver.find_element("id", "hint-preview").is_displayed(), 10, "the hint preview")
        from selenium.webdriver.support.ui import Select

        Select(driver.find_element("id", "depth_model")).select_by_value("dpt")
        assert "depth map steers" in driver.find_element("id", "hint-label").text

        # a malformed prompt: refused, the message names the position, the prompt box marks it
        _type(driver, "prompt", "a (lighthouse on a cliff")
        _type(driver, "steps", "2")
        _type(driver, "seed", "9")
        driver.find_element("id", "submit").click()
        _until(lambda: "position 2" in driver.find_element("id", "message").text, 20, "the syntax error")
        assert driver.execute_script("const p = document.getElementById('prompt'); "
                                     "return [p.classList.contains('invalid'), p.selectionStart, p.selectionEnd]") \
            == [True, 2, 3]
        shots(driver, "serve-prompt-syntax-error")

        _type(driver, "prompt", "a (lighthouse:1.3) on a cliff")
        driver.find_element("id", "submit").click()
        _until(lambda: _cards(driver), 240, "the ControlNet picture")
        shots(driver, "serve-controlnet")
        client_id = driver.execute_script("return localStorage.getItem('sfumato-client')")
        jobs = httpx.get(f"{server.url}/api/jobs", headers={"X-Sfumato-Client": client_id}).json()["jobs"]
        job = httpx.get(f"{server.url}{jobs[0]['url']}", headers={"X-Sfumato-Client": client_id}).json()
        assert job["state"] == "done" and job["request"]["controlnet"] == "depth", job
        record = job["images"][0]["record"]
        assert record["controlnet"] == str(Path(folders["controlnet"]).resolve()) and record["weighting"] is True
        assert record["depth_model"] == str(Path(dpt_folder).resolve())
        assert record["prompt"] == "a (lighthouse:1.3) on a cliff" and "image" not in record

        # ControlNet image-to-image: a starting picture (optional) and its strength
        assert driver.find_element("id", "image-box").is_displayed()
        assert "optional" in driver.find_element("id", "image-label").text
        start = tmp_path / "start.png"
        PIL.Image.fromarray(np.random.default_rng(5).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(start)
        driver.find_element("id", "image-file").send_keys(str(start))
        _until(lambda: driver.find_element("id", "image-stack").is_displayed(), 10, "the starting picture")
        _type(driver, "strength", "0.5")
        _type(driver, "steps", "4")
        cards = len(_cards(driver))
        driver.find_element("id", "submit").click()
        _until(lambda: len(_cards(driver)) > cards, 240, "the ControlNet image-to-image picture")
        shots(driver, "serve-controlnet-image-to-image")
        jobs = httpx.get(f"{server.url}/api/jobs", headers={"X-Sfumato-Client": client_id}).json()["jobs"]
        job = httpx.get(f"{server.url}{jobs[0]['url']}", headers={"X-Sfumato-Client": client_id}).json()
        assert job["state"] == "done" and job["request"]["strength"] == 0.5 and "image" in job["request"], job
        record = job["images"][0]["record"]
        assert (record["task"], record["strength"], record["steps"]) == ("controlnet", 0.5, 4) and "image" in record
        driver.find_element("id", "image-clear").click()
        assert not driver.find_element("id", "image-stack").is_displayed()

        # deleting a job from its picture's dialog: asked first, then gone from the page and the server
        shown = len(_cards(driver))
        driver.find_element("css selector", ".gallery .card").click()  # the newest
        _until(lambda: driver.find_element("id", "details").is_displayed(), 10, "the details dialog")
        driver.find_element("id", "delete-job").click()
        _until(lambda: driver.switch_to.alert, 10, "the confirmation")
        assert "Delete this job and its 1 picture" in driver.switch_to.alert.text
        driver.switch_to.alert.accept()
        _until(lambda: len(_cards(driver)) == shown - 1, 10, "the card to go")
        assert httpx.get(f"{server.url}{jobs[0]['url']}", headers={"X-Sfumato-Client": client_id}).status_code == 404
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert not [e for e in errors if "422" not in e["message"]], json.dumps(errors, indent=1)
    finally:
        server.stop()
