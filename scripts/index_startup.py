"""Start-up at CC3M's size: write a 3-million-row annotation file, then time indexing it.

    python scripts/index_startup.py make DIR [--rows 3000000]
    python scripts/index_startup.py measure DIR tsv|jsonl [--cache FOLDER] [--holdout 1000]

``make`` writes ``DIR/cc3m.tsv`` (img2dataset's ``caption<TAB>url`` with its header; captions of
6-16 random words of 2-9 letters, 70-character URLs) and ``DIR/captions.jsonl`` (the same rows
as ``{"image": "00000/000000000.jpg", "caption": ...}``). ``measure`` builds the data set in
this process and prints one JSON line: CPU seconds (``time.process_time``; wall time too, which
on a shared machine says little), the process's peak RSS, and with ``--holdout`` the cost of the
pretraining config's validation hold-out. Run each measurement in a fresh process; with
``--cache`` the first run builds and saves the index (cold) and the next ones load it (warm).
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import time
from pathlib import Path

import numpy as np


def make(folder: Path, rows: int) -> None:
    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = ["".join(rng.choice(letters, size=int(rng.integers(2, 10)))) for _ in range(20000)]
    hexdigits = np.array(list("0123456789abcdef"))
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "cc3m.tsv", "w") as tsv, open(folder / "captions.jsonl", "w") as manifest:
        tsv.write("caption\turl\n")
        for start in range(0, rows, 100_000):
            count = min(100_000, rows - start)
            lengths = rng.integers(6, 17, size=count)
            words = rng.integers(0, len(vocab), size=(count, 16))
            urls = ["".join(r) for r in hexdigits[rng.integers(0, 16, size=(count, 43))].tolist()]
            tsv_lines, json_lines = [], []
            for k in range(count):
                row = start + k
                caption = " ".join(vocab[w] for w in words[k, : lengths[k]])
                tsv_lines.append(f"{caption}\thttps://example.com/images/{urls[k]}\n")
                key = f"{row // 10000:05d}{row % 10000:04d}"
                image = f"{key[:5]}/{key}.jpg"
                json_lines.append(json.dumps({"image": image, "caption": caption}) + "\n")
            tsv.write("".join(tsv_lines))
            manifest.write("".join(json_lines))


def measure(folder: Path, kind: str, cache: Path | None, holdout: int) -> dict:
    from perceiver_vl.data import CC3M, CaptionDataset
    from perceiver_vl.data.splits import holdout_ids, restrict_entries

    options = {} if cache is None else {"index_cache": cache}
    wall, cpu = time.perf_counter(), time.process_time()
    if kind == "tsv":
        dataset = CC3M(folder / "cc3m.tsv", folder / "images", **options)
    else:
        dataset = CaptionDataset(folder / "captions.jsonl", folder / "images", **options)
    out = {
        "kind": kind,
        "cache": None if cache is None else str(cache),
        "entries": len(dataset),
        "index_cpu_s": time.process_time() - cpu,
        "index_wall_s": time.perf_counter() - wall,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if holdout:
        cpu = time.process_time()
        held = holdout_ids(dataset.entries.id_list(), holdout, 0)
        validation = copy.copy(dataset)
        restrict_entries(validation, held, True, "holdout")
        restrict_entries(dataset, held, False, "holdout")
        out["holdout_cpu_s"] = time.process_time() - cpu
        out["holdout_sizes"] = [len(validation), len(dataset)]
        out["peak_rss_mib_after_holdout"] = (
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_make = sub.add_parser("make")
    p_make.add_argument("folder", type=Path)
    p_make.add_argument("--rows", type=int, default=3_000_000)
    p_measure = sub.add_parser("measure")
    p_measure.add_argument("folder", type=Path)
    p_measure.add_argument("kind", choices=("tsv", "jsonl"))
    p_measure.add_argument("--cache", type=Path, default=None)
    p_measure.add_argument("--holdout", type=int, default=0)
    args = parser.parse_args()
    if args.command == "make":
        make(args.folder, args.rows)
    else:
        print(json.dumps(measure(args.folder, args.kind, args.cache, args.holdout)))


if __name__ == "__main__":
    main()
