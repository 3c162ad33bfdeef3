// The search page: plain JavaScript, no build step, nothing fetched from outside this server.
"use strict";

const PAGE = 12;
const form = document.getElementById("search-form");
const input = document.getElementById("q");
const modeSelect = document.getElementById("mode");
const grid = document.getElementById("results");
const statusLine = document.getElementById("status");
const moreButton = document.getElementById("more");
const indexInfo = document.getElementById("index-info");

let current = null; // {q, mode, offset}

function setStatus(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
}

async function getJSON(url) {
  const response = await fetch(url);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new Error(body.error || `HTTP ${response.status}`);
  }
  return body;
}

async function loadStats() {
  try {
    const stats = await getJSON("/api/stats");
    const m = stats.model;
    indexInfo.textContent = `${stats.videos.toLocaleString()} videos · model D=${m.hidden_size}, ` +
      `${m.num_latents} latents, ${(m.parameters / 1e6).toFixed(1)} M parameters`;
    input.maxLength = stats.limits.max_query_chars;
  } catch (err) {
    indexInfo.textContent = `index unavailable: ${err.message}`;
  }
}

function stopAll(except = null) {
  for (const card of grid.querySelectorAll(".card.playing")) {
    if (card !== except) stop(card);
  }
}

function play(card) {
  stopAll(card);
  const video = card.querySelector("video");
  if (!video.src) video.src = video.dataset.src; // the file is fetched only when first played
  card.classList.add("playing");
  card.querySelector(".play").setAttribute("aria-pressed", "true");
  video.play().catch(() => {}); // autoplay of a muted clip is allowed; ignore an aborted play
}

function stop(card) {
  const video = card.querySelector("video");
  video.pause();
  card.classList.remove("playing");
  card.querySelector(".play").setAttribute("aria-pressed", "false");
}

function toggle(card) {
  if (card.classList.contains("playing")) stop(card);
  else play(card);
}

function makeCard(hit) {
  const item = document.createElement("li");
  item.className = "card";
  item.dataset.video = hit.video;
  item.dataset.id = String(hit.id);

  const button = document.createElement("button");
  button.type = "button";
  button.className = "play";
  button.setAttribute("aria-pressed", "false");
  const caption = hit.captions.length ? hit.captions[0] : hit.video;
  button.setAttribute("aria-label", `rank ${hit.rank}: ${caption}. Play or pause the clip`);

  const media = document.createElement("div");
  media.className = "media";
  const rank = document.createElement("span");
  rank.className = "rank";
  rank.textContent = `#${hit.rank}`;
  const img = document.createElement("img");
  img.src = hit.thumbnail_url;
  img.alt = `thumbnail of ${hit.video}`;
  img.loading = "lazy";
  img.decoding = "async";
  const video = document.createElement("video");
  video.dataset.src = hit.file_url;
  video.muted = true;
  video.loop = true;
  video.playsInline = true;
  video.preload = "none";
  media.append(rank, img, video);
  button.append(media);

  const meta = document.createElement("div");
  meta.className = "meta";
  const text = document.createElement("p");
  text.className = "caption";
  text.textContent = caption;
  const name = document.createElement("p");
  name.className = "name";
  name.textContent = hit.video;
  const score = document.createElement("p");
  score.className = "score";
  const parts = [`score ${hit.score.toFixed(3)}`];
  if (hit.multi_score !== null && hit.mixed_score !== null) {
    parts.push(`cosine ${hit.multi_score.toFixed(3)}`);
  }
  score.textContent = parts.join(" · ");
  meta.append(text, name, score);

  item.append(button, meta);
  item.addEventListener("mouseenter", () => play(item));
  item.addEventListener("mouseleave", () => stop(item));
  button.addEventListener("click", () => toggle(item));
  return item;
}

async function runSearch(append) {
  if (!current) return;
  const params = new URLSearchParams({
    q: current.q, mode: current.mode, k: String(PAGE), offset: String(current.offset),
  });
  setStatus("searching…");
  moreButton.disabled = true;
  try {
    const started = performance.now();
    const result = await getJSON(`/api/search?${params}`);
    const roundTrip = performance.now() - started;
    if (!append) {
      stopAll();
      grid.replaceChildren();
    }
    for (const hit of result.results) grid.append(makeCard(hit));
    const shown = grid.children.length;
    setStatus(
      `${shown} of ${result.total_videos.toLocaleString()} videos shown · ${result.mode} · ` +
      `${result.took_ms.toFixed(1)} ms on the server, ${roundTrip.toFixed(0)} ms in all`
    );
    moreButton.hidden = !result.has_more;
    current.offset += result.results.length;
    history.replaceState(null, "", `#${new URLSearchParams({q: current.q, mode: current.mode})}`);
  } catch (err) {
    setStatus(`search failed: ${err.message}`, true);
  } finally {
    moreButton.disabled = false;
  }
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const q = input.value.trim();
  if (!q) return;
  current = {q, mode: modeSelect.value, offset: 0};
  runSearch(false);
});

modeSelect.addEventListener("change", () => {
  if (current) form.requestSubmit();
});

moreButton.addEventListener("click", async () => {
  const before = grid.children.length;
  await runSearch(true);
  const first = grid.children[before];
  if (first) first.querySelector(".play").focus();
});

document.addEventListener("keydown", (event) => {
  const inField = event.target instanceof HTMLInputElement || event.target instanceof HTMLSelectElement;
  if (event.key === "/" && !inField) {
    event.preventDefault();
    input.focus();
    input.select();
    return;
  }
  if (event.key === "Escape") {
    stopAll();
    return;
  }
  const card = event.target.closest && event.target.closest(".card");
  if (!card || !["ArrowRight", "ArrowLeft", "ArrowDown", "ArrowUp"].includes(event.key)) return;
  const cards = [...grid.children];
  const perRow = Math.max(1, Math.round(grid.clientWidth / card.clientWidth));
  const step = {ArrowRight: 1, ArrowLeft: -1, ArrowDown: perRow, ArrowUp: -perRow}[event.key];
  const next = cards[cards.indexOf(card) + step];
  if (next) {
    event.preventDefault();
    next.querySelector(".play").focus();
  }
});

function restoreFromHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  const q = params.get("q");
  if (!q) return;
  input.value = q;
  if (params.get("mode")) modeSelect.value = params.get("mode");
  form.requestSubmit();
}

loadStats();
restoreFromHash();
