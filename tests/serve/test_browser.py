"""The search page in a real browser: headless Chromium (the system's, driven by Playwright)
types a caption, sees its video first, the thumbnail loaded and the clip playing.

The index is demo-sized (``demo_index_dir``): the synthetic benchmark's test split as ``make demo``
generates it (500 clips of 64 px, 8-16 frames, seed 0), indexed by the demo's own index builder.
The model searching it is the tests' tiny one (D=32, 8 latents, 32 px frames) trained at test time
on the first 64 of those clips: the demo's model (D=128, 32 latents) needs minutes of training
to rank anything, and what is tested here is the page showing what the model ranks. The caption
typed is one whose video the Python API ranks first; a second query checks that the page's
ranking is the API's, whatever the model gets right.

Skipped, with the reason, when Playwright or a Chromium binary is missing (``make test`` tries to
install Debian's ``chromium``; set ``PERCEIVER_VL_CHROMIUM`` to use another binary). The page's
screenshot is written to the test's ``tmp_path`` and copied to ``test-artifacts/serve-page.png``
(or ``$PERCEIVER_VL_ARTIFACTS``).
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
def service(demo_index_dir, tmp_path_factory) -> SearchService:
    settings = ServeSettings(
        cache_dir=tmp_path_factory.mktemp("browser_thumbs"), refresh_interval_s=0
    )
    return SearchService.open(demo_index_dir, settings=settings)


@pytest.fixture(scope="module")
def server(service):
    with _InProcessServer(create_app(service)) as server:
        yield server


def _records(index_dir: Path) -> list[dict]:
    from perceiver_vl.retrieval import storage

    manifest = storage.read_manifest(index_dir)
    return [{"video": v["video"], "caption": v["captions"][0]} for v in manifest["videos"]]


@pytest.fixture(scope="module")
def query(service, demo_trained_records) -> dict:
    """The first trained clip whose caption the Python API ranks first (rerank, the page's
    default mode)."""
    assert len(service.index) == 500
    for record in demo_trained_records:
        hits = service.index.search(record["caption"], k=1, mode="rerank")
        if hits[0].video == record["video"]:
            return record
    raise AssertionError(
        f"none of the {len(demo_trained_records)} trained captions ranks its video first"
    )


def _artifact(screenshot: Path) -> Path:
    folder = Path(os.environ.get("PERCEIVER_VL_ARTIFACTS", REPO / "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copyfile(screenshot, folder / screenshot.name))


def _page_videos(page) -> list[str]:
    return page.eval_on_selector_all("#results .card", "cards => cards.map(c => c.dataset.video)")


def test_search_page_finds_thumbnails_and_plays_the_clip(browser, server, service, query, tmp_path):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.goto(server.url + "/")
    page.wait_for_selector("#index-info:has-text('500 videos')")

    # Keyboard only: "/" focuses the query box (from anywhere on the page), Enter searches.
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "q"
    page.keyboard.type(query["caption"])
    assert page.input_value("#q") == query["caption"]
    page.keyboard.press("Enter")
    page.wait_for_selector("#status:has-text('ms on the server')")

    cards = page.locator("#results .card")
    assert cards.count() == 12  # one page of the 500
    first = cards.nth(0)
    assert first.get_attribute("data-video") == query["video"]
    assert query["caption"] in first.inner_text()
    api = [hit.video for hit in service.index.search(query["caption"], k=12, mode="rerank")]
    assert _page_videos(page) == api

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
    screenshot = tmp_path / "serve-page.png"
    page.screenshot(path=str(screenshot))
    assert _artifact(screenshot).stat().st_size == screenshot.stat().st_size > 0

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


def test_page_shows_the_api_ranking_of_an_unseen_caption(browser, server, service, demo_index_dir):
    """A caption of a clip the model never trained on: whatever it ranks first (right or
    wrong), the page shows the API's ranking, here in multi mode chosen from the address."""
    caption = _records(demo_index_dir)[-1]["caption"]
    page = browser.new_page()
    page.goto(server.url + "/#" + "q=" + caption.replace(" ", "+") + "&mode=multi")
    page.wait_for_selector("#status:has-text('ms on the server')")
    assert page.input_value("#mode") == "multi"
    assert "multi" in page.inner_text("#status")
    api = [hit.video for hit in service.index.search(caption, k=12, mode="multi")]
    assert _page_videos(page) == api
    page.close()
