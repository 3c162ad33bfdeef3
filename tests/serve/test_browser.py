"""The search page in a real browser: headless Chromium (the system's, driven by Playwright)
types a caption, sees its video first, the thumbnail loaded and the clip playing. The index holds
the built-in synthetic benchmark's test clips, searched by a tiny model trained on them at test
time (the demo's model takes minutes to train; what is tested here is the page, not the model).

Skipped, with the reason, when Playwright or a Chromium binary is missing (``make test`` tries to
install Debian's ``chromium``; set ``PERCEIVER_VL_CHROMIUM`` to use another binary). The page's
screenshot is written to ``test-artifacts/serve-page.png`` (or ``$PERCEIVER_VL_ARTIFACTS``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip(
    "fastapi", reason="the service tests need the serve extra: pip install '.[serve]'"
)
pytest.importorskip(
    "playwright.sync_api",
    reason="the browser test needs Playwright (pip install '.[browser-test]'); its own browser "
    "downloads are not needed, the system Chromium is used",
)

from perceiver_vl.serve import SearchService, ServeSettings  # noqa: E402
from perceiver_vl.serve.app import create_app  # noqa: E402
from perceiver_vl.serve.loadbench import _InProcessServer  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _chromium() -> str | None:
    explicit = os.environ.get("PERCEIVER_VL_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import Error, sync_playwright

    executable = _chromium()
    if executable is None:
        pytest.skip(
            "no Chromium binary found (apt-get install chromium, or set PERCEIVER_VL_CHROMIUM); "
            "the browser test needs one"
        )
    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(
                executable_path=executable,
                headless=True,
                args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"],
            )
        except Error as err:
            pytest.skip(f"Chromium at {executable} did not start: {err}")
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(benchmark_index_dir, tmp_path_factory):
    settings = ServeSettings(
        cache_dir=tmp_path_factory.mktemp("browser_thumbs"), refresh_interval_s=0
    )
    service = SearchService.open(benchmark_index_dir, settings=settings)
    with _InProcessServer(create_app(service)) as server:
        yield server


def _artifact(name: str) -> Path:
    folder = Path(os.environ.get("PERCEIVER_VL_ARTIFACTS", REPO / "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def _records(index_dir: Path) -> list[dict]:
    from perceiver_vl.retrieval import storage

    manifest = storage.read_manifest(index_dir)
    return [{"video": v["video"], "caption": v["captions"][0]} for v in manifest["videos"]]


def test_search_page_finds_thumbnails_and_plays_the_clip(browser, server, benchmark_index_dir):
    records = _records(benchmark_index_dir)
    record = records[5]
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.goto(server.url + "/")
    page.wait_for_selector("#index-info:has-text('8 videos')")

    # Keyboard only: "/" focuses the query box (from anywhere on the page), Enter searches.
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "q"
    page.keyboard.type(record["caption"])
    assert page.input_value("#q") == record["caption"]
    page.keyboard.press("Enter")
    page.wait_for_selector("#results .card")
    page.wait_for_selector("#status:has-text('ms on the server')")

    cards = page.locator("#results .card")
    assert cards.count() == 8
    first = cards.nth(0)
    assert first.get_attribute("data-video") == record["video"]
    assert record["caption"] in first.inner_text()

    # Every thumbnail loaded (a decoded image, not a broken one).
    page.wait_for_function(
        "[...document.querySelectorAll('#results img')]"
        ".every(img => img.complete && img.naturalWidth > 0)"
    )
    assert page.evaluate("document.querySelector('#results img').naturalWidth") == 320

    # Hover plays the clip (muted, looping) and its time advances.
    first.hover()
    page.wait_for_function(
        "(() => { const v = document.querySelector('#results .card video');"
        " return v && !v.paused && v.readyState >= 2 && v.currentTime > 0; })()",
        timeout=15000,
    )
    page.screenshot(path=str(_artifact("serve-page.png")), full_page=True)

    # Enter on the focused card toggles playback; Escape stops.
    page.mouse.move(1, 1)
    second = cards.nth(1)
    second.locator(".play").focus()
    page.keyboard.press("Enter")
    page.wait_for_function(
        "document.querySelectorAll('#results .card')[1].classList.contains('playing')"
    )
    page.keyboard.press("Escape")
    assert page.evaluate("document.querySelectorAll('#results .card.playing').length") == 0
    assert console_errors == []
    page.close()


def test_mode_selector_from_the_address(browser, server, benchmark_index_dir):
    records = _records(benchmark_index_dir)
    page = browser.new_page()
    page.goto(server.url + "/#" + "q=" + records[0]["caption"].replace(" ", "+") + "&mode=multi")
    page.wait_for_selector("#results .card")
    assert page.locator("#results .card").nth(0).get_attribute("data-video") == records[0]["video"]
    assert page.input_value("#mode") == "multi"
    assert "multi" in page.inner_text("#status")
    page.close()
