"""Time our forward and the authors' side by side, as single-thread CPU time.

    python scripts/side_by_side.py [--rounds 3] [--frames 8,32] [--threads 1] [--json out.json]
        [--no-extras] [--no-bf16] [--authors ../shared/reference] [--authors-root ~/.cache/pvl-authors]

Two long-lived worker processes, one per implementation, each with ``--threads`` intra-op
threads; the driver asks them in turn (ours, theirs, ours, theirs, ...) for one timed forward at
a time, so a change in machine load hits both alike and they never run at once. With one thread
(the default) each forward is timed with ``time.thread_time()`` (CPU time of the calling
thread: all the work runs on it), which a loaded, shared machine does not inflate the way it
inflates wall-clock time; with more threads (``--threads 2``: the issue's setting, for a quiet
machine) wall-clock time is what is compared. Both are recorded; medians over rounds are
reported, with each row's speed-up over the authors' fp32 forward at the same frame count and
its fraction of this machine's matmul rate in its precision (measured by the same worker).

Paper configuration: 384x384 frames, 40 text tokens, N = 128 latents, all three
cross-attention blocks, batch 1, eval + inference_mode, vision-text matching score. The authors'
side runs their released code through the measuring tool in ``--authors`` (run
``authors-bench`` there once first: it builds the venv and sources under ``--authors-root``); nothing
of it is imported by the project. Our extra rows: bf16 weights, batch 16 throughput and the
text-only encode (what a search query costs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The worker programs read one case per stdin line ("kind frames dtype batch") and answer with
# one JSON line {"cpu_s": ..., "wall_s": ...}; the first line they print is "ready".
OURS = r"""
import copy, json, os, sys, time, torch
torch.set_num_threads(int(os.environ["SBS_THREADS"]))
from perceiver_vl import PerceiverVL, PerceiverVLConfig
from perceiver_vl.flops import count_flops_of
torch.manual_seed(0)
models = {"fp32": PerceiverVL(PerceiverVLConfig(max_frames=32)).eval()}
models["bf16"] = copy.deepcopy(models["fp32"]).to(torch.bfloat16)
counted = {}
print("ready", flush=True)
for line in sys.stdin:
    kind, frames, dtype, batch = line.split()
    frames, batch = int(frames), int(batch)
    model = models[dtype]
    g = torch.Generator().manual_seed(frames)
    ids = torch.randint(1000, 30000, (batch, 40), generator=g)
    video = torch.randn(batch, frames, 3, 384, 384, generator=g).clamp_(-1, 1)
    video = video.to(model.encoder.latents.dtype)
    if kind == "matmul":  # the machine's square-matmul rate in this dtype, same clock
        # F.linear, the op every projection of the model runs (on CPUs without bf16
        # instructions, torch.mm in bf16 takes a far slower path than linear)
        a, b = (torch.randn(2048, 2048, generator=g).to(model.encoder.latents.dtype) for _ in "ab")
        torch.nn.functional.linear(a, b)
        c, w = time.thread_time(), time.perf_counter()
        for _ in range(3):
            torch.nn.functional.linear(a, b)
        cpu, wall = (time.thread_time() - c) / 3, (time.perf_counter() - w) / 3
        print(json.dumps({"cpu_s": cpu, "wall_s": wall, "gflops": 2 * 2048**3 / 1e9}), flush=True)
        continue
    def call():
        with torch.inference_mode(), model.trusted_inputs():
            if kind == "text":
                return model.encode(text_ids=ids)
            return model(video=video, text_ids=ids, cross_attention_layers=[0, 1, 2]).matching_logits
    call()  # warm-up (first call allocates, oneDNN picks kernels)
    c, w = time.thread_time(), time.perf_counter()
    call()
    cpu, wall = time.thread_time() - c, time.perf_counter() - w
    if dtype == "fp32" and (kind, frames, batch) not in counted:  # bf16: the same count
        counted[kind, frames, batch] = count_flops_of(call) / 1e9
    flops = counted.get((kind, frames, batch)) if dtype == "fp32" else None
    print(json.dumps({"cpu_s": cpu, "wall_s": wall, "gflops": flops}), flush=True)
"""

THEIRS = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
import authors_harness as h
off = h.Official(sys.argv[2], sys.argv[3])
import torch
torch.set_num_threads(int(os.environ["SBS_THREADS"]))
cfg = off.config("default", "perceiver", layer_drop=1.0)
model = off.build(cfg, seed=0)
print("ready", flush=True)
for line in sys.stdin:
    kind, frames, dtype, batch = line.split()
    frames, batch = int(frames), int(batch)
    model.transformer.max_frames = frames
    g = torch.Generator().manual_seed(frames)
    video = torch.randn(batch, frames, 3, 384, 384, generator=g).clamp_(-1, 1)
    ids = torch.randint(1000, 30000, (batch, 40), generator=g)
    data = {"video_data": video, "text_ids": ids, "text_masks": torch.ones(batch, 40, dtype=torch.long),
            "text_labels": torch.full((batch, 40), -100), "text_ids_mlm": ids,
            "text_labels_mlm": torch.full((batch, 40), -100)}
    def call():
        with torch.inference_mode():
            return model.matching_score(model.infer(data, mask_text=False, mask_visual=False)["cls_feats"])
    call()
    c, w = time.thread_time(), time.perf_counter()
    call()
    print(json.dumps({"cpu_s": time.thread_time() - c, "wall_s": time.perf_counter() - w}), flush=True)
"""


class Worker:
    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            raise SystemExit(f"worker {argv[:2]} did not start (said {line!r})")

    def time(self, case: str) -> dict[str, float]:
        self.proc.stdin.write(case + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternations (3)")
    parser.add_argument("--frames", default="8,32", help="frame counts (8,32)")
    parser.add_argument("--authors", type=Path, default=REPO.parent / "shared" / "reference")
    parser.add_argument("--authors-root", type=Path, default=Path.home() / ".cache" / "pvl-authors")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per worker (1)")
    parser.add_argument("--no-extras", action="store_true", help="skip bf16/batch-16/text rows")
    parser.add_argument(
        "--no-bf16",
        action="store_true",
        help="skip the bf16 rows (for CPUs without bf16 units, where bf16 is emulated)",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    env["SBS_THREADS"] = threads
    ours_env = {**env, "PYTHONPATH": str(REPO / "src")}
    root = args.authors_root
    authors_python = root / "venv" / "bin" / "python"
    if not authors_python.exists() or not (root / "shims").is_dir():
        raise SystemExit(f"{authors_python} missing: run {args.authors}/authors-bench once first")
    ours = Worker([sys.executable, "-c", OURS], ours_env)
    theirs = Worker(
        [
            str(authors_python),
            "-c",
            THEIRS,
            str(args.authors),
            str(root / "src"),
            str(root / "shims"),
        ],
        env,
    )
    frames = [int(f) for f in args.frames.split(",")]
    extras = [] if args.no_extras else [("joint", t, "bf16", 1) for t in frames]
    if not args.no_extras:
        extras += [("joint", frames[0], "fp32", 16), ("joint", frames[0], "bf16", 16)]
        extras += [("text", 0, "fp32", 1), ("text", 0, "bf16", 1)]
        extras += [("matmul", 0, "fp32", 1), ("matmul", 0, "bf16", 1)]
    if args.no_bf16:
        extras = [case for case in extras if case[2] != "bf16"]
    samples: dict[str, list[dict[str, float]]] = {}
    for round_ in range(args.rounds):
        for t in frames:
            for name, worker in (("ours", ours), ("authors", theirs)):
                key = f"{name} fp32 joint {t} frames batch 1"
                samples.setdefault(key, []).append(worker.time(f"joint {t} fp32 1"))
                print(round_, key, samples[key][-1], flush=True)
        for kind, t, dtype, batch in extras:
            key = f"ours {dtype} {kind} {t} frames batch {batch}"
            samples.setdefault(key, []).append(ours.time(f"{kind} {t} {dtype} {batch}"))
            print(round_, key, samples[key][-1], flush=True)
    theirs.close()
    ours.close()
    clock = "cpu_s" if args.threads == 1 else "wall_s"
    summary = {
        key: {
            "cpu_ms_median": 1e3 * statistics.median(s["cpu_s"] for s in runs),
            "wall_ms_median": 1e3 * statistics.median(s["wall_s"] for s in runs),
            "runs": len(runs),
            "gflops": next((s["gflops"] for s in runs if s.get("gflops")), None),
        }
        for key, runs in samples.items()
    }
    for key, row in summary.items():  # bf16 rows: the fp32 row's FLOP count
        if row["gflops"] is None:
            twin = summary.get(key.replace("bf16", "fp32"))
            row["gflops"] = twin["gflops"] if twin else None
    ms = "cpu_ms_median" if clock == "cpu_s" else "wall_ms_median"
    for key, row in summary.items():
        dtype, kind, t, batch = key.split()[1], key.split()[2], key.split()[3], key.split()[-1]
        authors = summary.get(f"authors fp32 joint {t} frames batch 1")
        if authors and kind == "joint" and batch == "1":
            row["speedup_over_authors_fp32"] = authors[ms] / row[ms]
        rate = summary.get(f"ours {dtype} matmul 0 frames batch 1")
        if rate and row["gflops"] and kind != "matmul":
            matmul_rate = rate["gflops"] / rate[ms] * 1e3
            row["fraction_of_matmul_rate"] = row["gflops"] / row[ms] * 1e3 / matmul_rate
    print(f"threads {args.threads}; times: {'CPU time' if clock == 'cpu_s' else 'wall clock'}")
    for key, row in summary.items():
        extra = ""
        if "speedup_over_authors_fp32" in row:
            extra += f"  {row['speedup_over_authors_fp32']:.2f}x authors fp32"
        if "fraction_of_matmul_rate" in row:
            extra += f"  {100 * row['fraction_of_matmul_rate']:.0f} % of matmul rate"
        print(f"{key:42s} {row[ms]:9.1f} ms{extra}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"threads": args.threads, "clock": clock, "summary": summary, "samples": samples},
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
