"""Scaling extraction out (prints figures; no assertion).

(a) clips/s of `--jobs 1`, `--jobs 2` and a 2-worker local Dask cluster (`--scheduler local:2`) on the
    same clips with the default features, in one run, each into a fresh cache (median of --repeat);
(b) the client-side writer's capacity: clips/s that ShardWriter absorbs for a 25 x 1024 layered
    feature (HuBERT-large-sized), flushing every 32 clips, so that at MER scale (132k clips) the single
    writer is never the bottleneck;
(c) merge time of 16 shard caches of 8,000 clips each (synthetic 256-d vectors) into one;
(d) the machine's own ceiling for (a): seconds per clip of the same decode + extract loop (loaded
    models, one thread) in one process alone and in two processes at once; 2 x alone / together is
    the most two processes can give here (shared caches, memory bandwidth, a virtual CPU's sibling).

`--jobs N` runs N processes of `--threads` (default 1) threads each, so `--jobs 1` is one core's work.

Data: ../shared/data/emo-av (287 clips) when present, else synthetic clips.

    python bench/bench_scale.py [--clips N] [--repeat 1] [--skip-a] [--skip-d]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EMO_AV = ROOT.parent / "shared" / "data" / "emo-av"


def clips_folder(work: Path, n: int | None) -> Path:
    videos = EMO_AV if EMO_AV.is_dir() and any(EMO_AV.glob("*.mp4")) else None
    if videos is None:
        from extract.demo_data import make_demo_set

        return make_demo_set(work / "synthetic", labeled_per_class=8, unlabeled_per_class=2)["videos"]
    sub = work / "clips"  # the clips alone (the data folder also holds labels and annotator files)
    sub.mkdir()
    for p in sorted(videos.glob("*.mp4"))[:n]:
        (sub / p.name).symlink_to(p)
    return sub


def bench_a(folder: Path, repeat: int, work: Path) -> None:
    from extract import extract
    from extract.defaults import DEFAULT_FEATURES

    variants = {"--jobs 1": dict(jobs=1), "--jobs 2": dict(jobs=2), "--scheduler local:2": dict(scheduler="local:2")}
    n = len([p for p in folder.iterdir()])
    rates: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(repeat):
        for name, kw in variants.items():
            cache = work / f"a-{r}-{name.replace(' ', '').replace(':', '')}"
            t0 = time.perf_counter()
            texts = EMO_AV / "transcripts.csv"
            s = extract(folder, cache, features=DEFAULT_FEATURES, progress=False,
                        transcripts=texts if texts.is_file() else None, **kw)
            dt = time.perf_counter() - t0
            rates[name].append(s.clips / dt)
            print(f"    run {r + 1} {name:<22} {s.clips} clips in {dt:6.1f} s ({s.clips / dt:.2f} clips/s)")
    base = statistics.median(rates["--jobs 1"])
    print(f"(a) {n} clips, default features ({DEFAULT_FEATURES}), median of {repeat}; the speed-up is also given "
          "as the median of each repeat's own ratio (its variants ran back to back: robust to the machine's drift)")
    for name, rs in rates.items():
        m = statistics.median(rs)
        paired = statistics.median(r / b for r, b in zip(rs, rates["--jobs 1"]))
        print(f"    {name:<22} {m:.2f} clips/s  = {m / base:.2f}x --jobs 1 (paired: {paired:.2f}x; "
              f"runs {', '.join(f'{r:.2f}' for r in rs)})")


def bench_b(work: Path, clips: int = 2000) -> None:
    from extract.cache import Feature, FeatureCache, ShardWriter

    cache = FeatureCache(work / "writer")
    fs = cache.create("layers-bench0000", {"extractor": "bench", "kind": "layers", "config_hash": "bench0000"})
    w = ShardWriter(fs, "layers")
    rng = np.random.default_rng(0)
    values = [rng.normal(size=(25, 1024)).astype(np.float32) for _ in range(64)]
    t0 = time.perf_counter()
    for i in range(clips):
        w.add(f"clip{i:07d}", Feature(data=values[i % 64]))
        if len(w) >= 32:
            w.flush()
    w.flush()
    dt = time.perf_counter() - t0
    mb = clips * 25 * 1024 * 4 / 1e6
    print(f"(b) writer: {clips} clips of 25 x 1024 float32 in {dt:.1f} s = {clips / dt:.0f} clips/s "
          f"({mb / dt:.0f} MB/s); MER's 132k clips would need {132_000 / (clips / dt) / 60:.1f} min of writing")


def bench_c(work: Path, shards: int = 16, per: int = 8000, dim: int = 256) -> None:
    from extract.cache import Feature, put
    from extract.cache_merge import merge

    rng = np.random.default_rng(1)
    roots = []
    for s in range(shards):
        vals = {f"clip{s:02d}-{i:05d}": Feature(data=rng.normal(size=dim).astype(np.float32)) for i in range(per)}
        roots.append(work / f"shard-{s:02d}")
        put(roots[-1], "vec", "vector", vals, meta={"config": {"bench": 1}})
    t0 = time.perf_counter()
    rep = merge(roots, work / "merged")
    dt = time.perf_counter() - t0
    print(f"(c) merge: {shards} shard caches x {per} clips ({dim}-d) = {shards * per} clips in {dt:.1f} s "
          f"({sum(r['shards'] for r in rep.sets.values())} shards copied, then compacted)")


def ceiling_worker(folder: Path, n: int) -> None:
    """(d), in a subprocess: seconds per clip of decode + every default extractor, after 3 warm-up clips."""
    from threadpoolctl import threadpool_limits

    from extract import media, registry
    from extract.defaults import DEFAULT_FEATURES
    from extract.runner import _set_threads, run_order

    registry.load_all()
    exs = [registry.build(spec) for spec in registry.split_specs(DEFAULT_FEATURES)]
    for ex in exs:
        ex.run_threads = 1
    files = sorted(folder.iterdir())[:n + 3]
    needs = tuple(sorted({need for ex in exs for need in ex.needs if need != "text"}))
    with threadpool_limits(limits=1, user_api="blas"):
        _set_threads(1)
        for i, f in enumerate(files):
            if i == 3:
                t0 = time.perf_counter()
            clip = media.decode(f, f.stem, needs, threads=1)
            clip.text = "a transcript"
            for ex in run_order(exs):
                ex.ensure_loaded().extract(clip)
    print(f"{(time.perf_counter() - t0) / (len(files) - 3):.4f}")
    for ex in exs:
        ex.close()


def bench_d(folder: Path, n: int = 40) -> None:
    import subprocess
    import sys

    cmd = [sys.executable, __file__, "--ceiling-worker", str(folder), "--clips", str(n)]

    def run(k: int) -> list[float]:
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for _ in range(k)]
        return [float(p.communicate()[0].strip().splitlines()[-1]) for p in procs]

    alone = run(1)[0]
    together = run(2)
    per = statistics.mean(together)
    print(f"(d) ceiling: {alone:.3f} s per clip alone, {per:.3f} s with two processes at once "
          f"-> two processes give at most {2 * alone / per:.2f}x one on this machine")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=None, help="use only the first N clips for (a)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--skip-a", action="store_true")
    ap.add_argument("--skip-d", action="store_true")
    ap.add_argument("--ceiling-worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ceiling_worker:
        return ceiling_worker(args.ceiling_worker, args.clips)
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    folder = clips_folder(work, args.clips) if not (args.skip_a and args.skip_d) else None
    if not args.skip_a:
        bench_a(folder, args.repeat, work)
    bench_b(work)
    bench_c(work)
    if not args.skip_d:
        bench_d(folder)


if __name__ == "__main__":
    main()
