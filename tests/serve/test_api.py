"""The JSON API: happy paths, bad inputs, files, safety (tiny trained model, 8 clips)."""

from __future__ import annotations

import io

import pytest

pytest.importorskip(
    "fastapi", reason="the service tests need the serve extra: pip install '.[serve]'"
)
pytest.importorskip(
    "httpx", reason="the service tests need the serve extra: pip install '.[serve]'"
)

from fastapi.testclient import TestClient  # noqa: E402

from perceiver_vl.serve import SearchService, ServeSettings  # noqa: E402
from perceiver_vl.serve.app import STATIC_DIR, create_app  # noqa: E402


@pytest.fixture(scope="module")
def service(serve_index_dir, tmp_path_factory) -> SearchService:
    settings = ServeSettings(
        cache_dir=tmp_path_factory.mktemp("thumbs"), refresh_interval_s=0, max_k=20, max_results=40
    )
    return SearchService.open(serve_index_dir, settings=settings)


@pytest.fixture(scope="module")
def client(service):
    with TestClient(create_app(service)) as client:
        yield client


def _error(response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status and isinstance(body["error"], str) and body["error"]
    return body["error"]


def test_health_and_stats(client, serve_index_dir):
    health = client.get("/api/health").json()
    assert health == {"status": "ok", "videos": 8, "generation": 0}
    stats = client.get("/api/stats").json()
    assert stats["videos"] == 8 and stats["shards"] == 1
    assert stats["preprocessing"]["num_frames"] == 8
    assert stats["model"]["hidden_size"] == 32 and len(stats["model"]["weights_sha256"]) == 64
    assert stats["shortlist"] in ("exact", "faiss")
    assert stats["limits"]["max_k"] == 20


@pytest.mark.parametrize("mode", ["rerank", "multi", "mixed"])
def test_each_caption_finds_its_video_first(client, serve_collection, mode):
    _, records = serve_collection
    for record in records:
        body = client.get("/api/search", params={"q": record["caption"], "k": 3, "mode": mode})
        assert body.status_code == 200, body.text
        result = body.json()
        assert result["mode"] == mode and result["total_videos"] == 8
        assert [hit["rank"] for hit in result["results"]] == [1, 2, 3]
        first = result["results"][0]
        assert first["video"] == record["video"]
        assert first["captions"] == [record["caption"]]
        assert first["file_url"] == f"/api/videos/{first['id']}/file"
        assert result["took_ms"] >= 0 and result["has_more"] is True


def test_pages_concatenate_to_the_full_ranking(client):
    q = "a green square moves left"
    full = client.get("/api/search", params={"q": q, "k": 8}).json()
    first = client.get("/api/search", params={"q": q, "k": 5}).json()
    second = client.get("/api/search", params={"q": q, "k": 5, "offset": 5}).json()
    assert [h["id"] for h in first["results"] + second["results"]] == [
        h["id"] for h in full["results"]
    ]
    assert [h["rank"] for h in second["results"]] == [6, 7, 8]
    assert first["has_more"] is True and second["has_more"] is False and full["has_more"] is False


def test_cross_attention_blocks_of_the_query_encoder(client):
    one = client.get("/api/search", params={"q": "a red square moves right", "blocks": "0"})
    both = client.get("/api/search", params={"q": "a red square moves right", "blocks": "0,1"})
    default = client.get("/api/search", params={"q": "a red square moves right"})
    assert one.status_code == both.status_code == 200
    assert one.json()["blocks"] == [0]
    assert [h["score"] for h in both.json()["results"]] == [
        h["score"] for h in default.json()["results"]
    ]


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({}, "q"),
        ({"q": ""}, "q"),
        ({"q": "   "}, "empty"),
        ({"q": "x" * 501}, "q"),
        ({"q": "a", "k": 0}, "k"),
        ({"q": "a", "k": 21}, "k"),
        ({"q": "a", "k": "ten"}, "k"),
        ({"q": "a", "mode": "fast"}, "mode"),
        ({"q": "a", "offset": -1}, "offset"),
        ({"q": "a", "offset": 30, "k": 20}, "offset + k"),
        ({"q": "a", "blocks": "first"}, "blocks"),
        ({"q": "a", "blocks": "5"}, "blocks=5"),
        ({"q": "a", "shortlist": 0}, "shortlist"),
    ],
)
def test_bad_search_requests_are_json_422_naming_the_argument(client, params, words):
    assert words in _error(client.get("/api/search", params=params), 422)


def test_mixed_mode_is_refused_on_indexes_too_large_for_it(service, client):
    limit = service.settings.max_mixed_videos
    try:
        service.settings.max_mixed_videos = 4
        message = _error(client.get("/api/search", params={"q": "a", "mode": "mixed"}), 422)
        assert "mode=rerank" in message
        assert client.get("/api/search", params={"q": "a", "mode": "rerank"}).status_code == 200
    finally:
        service.settings.max_mixed_videos = limit


def test_video_file_full_and_ranged(client, serve_collection):
    root, records = serve_collection
    data = (root / records[2]["video"]).read_bytes()
    full = client.get("/api/videos/2/file")
    assert full.status_code == 200 and full.content == data
    assert full.headers["content-type"] == "video/mp4"
    assert full.headers["accept-ranges"] == "bytes"
    part = client.get("/api/videos/2/file", headers={"Range": "bytes=10-109"})
    assert part.status_code == 206 and part.content == data[10:110]
    assert part.headers["content-range"] == f"bytes 10-109/{len(data)}"
    tail = client.get("/api/videos/2/file", headers={"Range": f"bytes={len(data) + 5}-"})
    assert tail.status_code == 416
    meta = client.get("/api/videos/2").json()
    assert meta["video"] == records[2]["video"] and meta["captions"] == [records[2]["caption"]]


def test_thumbnail_is_made_once_and_cached(client, service):
    from PIL import Image

    first = client.get("/api/videos/5/thumbnail")
    assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(first.content))
    assert image.size == (320, 320)
    cached = list(service.settings.resolved_cache_dir().glob("*.jpg"))
    assert len(cached) == 1
    assert client.get("/api/videos/5/thumbnail").content == first.content
    assert list(service.settings.resolved_cache_dir().glob("*.jpg")) == cached


@pytest.mark.parametrize(
    "path",
    [
        "/api/videos/8/file",
        "/api/videos/-1/file",
        "/api/videos/99999999999999999999999/file",
        "/api/videos/..%2F..%2F..%2Fetc%2Fpasswd/file",
        "/api/videos/%2Fetc%2Fpasswd/file",
        "/api/videos/../../../etc/passwd",
        "/api/videos//etc/passwd",
        "/api/videos/0/file/../../../../etc/passwd",
        "/api/videos/8/thumbnail",
        "/static/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/static/%2Fetc%2Fpasswd",
        "/etc/passwd",
    ],
)
def test_only_registered_files_are_served(client, path):
    response = client.get(path)
    assert response.status_code in (404, 422), (path, response.status_code)
    assert "root:" not in response.text
    assert response.json()["status"] == response.status_code


def test_no_write_endpoints(client):
    schema = client.get("/openapi.json").json()
    assert "/api/search" in schema["paths"]
    assert "/api/videos/{video_id}/file" in schema["paths"]
    methods = {method for item in schema["paths"].values() for method in item}
    assert methods == {"get"}
    for method in ("post", "put", "delete", "patch"):
        message = _error(getattr(client, method)("/api/search"), 405)
        assert "read-only" in message
    _error(client.get("/api/nothing-here"), 404)


def test_page_uses_no_external_assets(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="q"' in page.text and 'id="mode"' in page.text
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200
    for file in STATIC_DIR.iterdir():
        text = file.read_text()
        assert "http://" not in text and "https://" not in text, file.name


def test_an_unexpected_failure_is_a_json_500_without_internals(service, monkeypatch):
    def broken(requests):
        raise RuntimeError("secret detail")

    monkeypatch.setattr(service, "search_batch", broken)
    with TestClient(create_app(service), raise_server_exceptions=False) as client:
        response = client.get("/api/search", params={"q": "a red square"})
        assert "secret" not in _error(response, 500)
        assert client.get("/api/health").status_code == 200  # the service keeps serving
