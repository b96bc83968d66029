"""The web app in a real browser: headless Chromium (Debian's `chromium` + `chromium-driver`,
driven by selenium) uploads a portrait and a wav, clicks Generate and checks the video plays
with the audio's duration and the photo's frame size (paste-back); bad input shows its message
in the page.

Uses the tiny random pipeline and one second of audio. Set VASA_BROWSER_SCREENSHOT=path.png to
keep a screenshot of the page after the generation."""
import os
import shutil
import socket

import numpy as np
import pytest

gradio = pytest.importorskip("gradio")
selenium = pytest.importorskip("selenium", reason="selenium is not installed")

from selenium import webdriver  # noqa: E402  pylint: disable=wrong-import-position
from selenium.webdriver.common.by import By  # noqa: E402  pylint: disable=wrong-import-position
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402  pylint: disable=wrong-import-position

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Chromium and its driver: `apt-get install -y chromium chromium-driver` "
           "(.ci/run installs them)")

SECONDS = 1.0


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def page(tiny_pipeline_dir, tmp_path_factory):
  """(url, pipeline) of the app served on loopback; stopped after the module."""
  from vasa_jax.inference import pipeline as pipeline_lib  # pylint: disable=import-outside-toplevel
  from vasa_jax.serve import app  # pylint: disable=import-outside-toplevel
  pipe = pipeline_lib.load_pipeline(tiny_pipeline_dir)
  demo = app.build_app(pipe, out_dir=tmp_path_factory.mktemp("videos"))
  port = _free_port()
  demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
  try:
    yield f"http://127.0.0.1:{port}/", pipe
  finally:
    demo.close()


@pytest.fixture(scope="module")
def browser():
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--mute-audio",
              "--autoplay-policy=no-user-gesture-required", "--window-size=1280,1000"):
    options.add_argument(arg)
  driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER),
                            options=options)
  driver.set_page_load_timeout(60)
  try:
    yield driver
  finally:
    driver.quit()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  """(astronaut png, grey png without a face, 1 s wav)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from skimage import data  # pylint: disable=import-outside-toplevel
  from vasa_jax.data import media  # pylint: disable=import-outside-toplevel
  d = tmp_path_factory.mktemp("inputs")
  Image.fromarray(data.astronaut()).save(d / "astronaut.png")
  Image.fromarray(np.full((200, 200, 3), 128, np.uint8)).save(d / "grey.png")
  t = np.arange(int(SECONDS * 16000)) / 16000
  media.write_wav(d / "speech.wav", 0.3 * np.sin(2 * np.pi * 180 * t) * np.sin(2 * np.pi * 3 * t))
  return str(d / "astronaut.png"), str(d / "grey.png"), str(d / "speech.wav")


def _upload_and_generate(driver, url, image, audio):
  driver.get(url)
  wait = WebDriverWait(driver, 60)
  for elem_id, path in (("portrait", image), ("speech", audio)):
    field = wait.until(lambda d, e=elem_id: d.find_element(By.CSS_SELECTOR,
                                                           f"#{e} input[type=file]"))
    field.send_keys(path)
  # Uploads are done when the audio player and the image preview exist.
  wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#portrait img"))
  wait.until(lambda d: d.find_elements(By.CSS_SELECTOR,
                                       "#speech audio, #speech .waveform-container"))
  driver.find_element(By.ID, "generate").click()


def test_page_generates_a_video_that_plays(page, browser, inputs):
  url, pipe = page
  portrait, _, speech = inputs
  _upload_and_generate(browser, url, portrait, speech)
  wait = WebDriverWait(browser, 120)
  video = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#video video[src]"))
  info = wait.until(lambda d: d.execute_script(
      "const v = arguments[0]; if (v.readyState < 1) return null;"
      "return {duration: v.duration, width: v.videoWidth, height: v.videoHeight};", video))
  assert abs(info["duration"] - SECONDS) <= 0.1, info
  # Paste-back is ticked by default: the whole 512 x 512 photo, not the R x R crop.
  assert (info["width"], info["height"]) == (512, 512), info
  # It plays: time moves forward after play().
  played = wait.until(lambda d: d.execute_script(
      "const v = arguments[0]; if (v.paused) { v.muted = true; v.play(); }"
      "return v.currentTime > 0.2 ? v.currentTime : null;", video))
  assert played > 0.2
  status = browser.find_element(By.ID, "status").text
  assert "25 frames (1.00 s)" in status, status
  # It can be downloaded: the player's download control points at the same file.
  links = browser.find_elements(By.CSS_SELECTOR,
                                "#video a[download], #video [aria-label*='ownload']")
  assert links, browser.find_element(By.ID, "video").get_attribute("innerHTML")[:2000]
  shot = os.environ.get("VASA_BROWSER_SCREENSHOT")
  if shot:
    browser.save_screenshot(shot)


def test_page_shows_bad_input_as_a_message(page, browser, inputs):
  url, _ = page
  _, grey, speech = inputs
  _upload_and_generate(browser, url, grey, speech)
  # The message renders as it streams in: wait for all of it (the text after "Error:").
  def full_message(driver):
    text = driver.find_element(By.ID, "status").text
    return text if len(text) > 20 else None

  status = WebDriverWait(browser, 60).until(full_message)
  assert status.startswith("Error:") and "face" in status.lower(), status
  assert "Traceback" not in browser.page_source
