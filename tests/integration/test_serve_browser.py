"""The page at / in a real headless Chromium (Debian chromium + chromium-driver, through selenium):
type a prompt, Write, watch the story grow as it streams, Stop, and the server frees the row."""

import shutil
import time

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "install Debian's chromium and chromium-driver (.ci/run does: apt-get install -y chromium chromium-driver)"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    b = webdriver.Chrome(service=Service(driver), options=options)
    yield b
    b.quit()


def story_length(browser) -> int:
    return len(browser.find_element(By.ID, "story").text)


def test_the_page_streams_a_story_and_stop_cancels_it(server, browser):
    before = server.health()["finished"].get("cancelled", 0)
    browser.get(server.url + "/")
    prompt = browser.find_element(By.ID, "prompt")
    prompt.clear()
    prompt.send_keys("The little dog")
    length = browser.find_element(By.ID, "length")
    length.clear()
    length.send_keys("2000")
    browser.find_element(By.ID, "write").click()
    wait = WebDriverWait(browser, 30, poll_frequency=0.02)
    seen = [story_length(browser)]
    for _ in range(3):  # the text grows in steps while the answer streams
        wait.until(lambda b: story_length(b) > seen[-1])
        seen.append(story_length(browser))
    assert browser.find_element(By.ID, "story").text.startswith("The little dog")
    assert browser.find_element(By.ID, "status").text == "writing..."
    browser.find_element(By.ID, "stop").click()
    wait.until(lambda b: b.find_element(By.ID, "status").text == "stopped")
    stopped_at = story_length(browser)
    time.sleep(0.5)
    assert story_length(browser) == stopped_at and browser.find_element(By.ID, "write").is_enabled()
    deadline = time.time() + 30
    while time.time() < deadline and server.health()["finished"].get("cancelled", 0) == before:
        time.sleep(0.05)
    assert server.health()["finished"].get("cancelled", 0) == before + 1  # the row left before its 2000 tokens
    assert server.health()["active"] == 0
