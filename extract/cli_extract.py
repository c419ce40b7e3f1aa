"""`extract`, `features` and `cache info` commands."""
from __future__ import annotations

import json
import logging
import sys
from collections import Counter

import click

from .api import DEFAULT_CACHE, DEVICES, ExtractConfig
from .cache import CacheError, FeatureCache, FeatureSet
from .defaults import DEFAULT_FEATURES
from .executors import AUTO_MIN_CLIPS
from .registry import SpecError, describe, load_all
from .runner import UsageError

FEATURES_HELP = f"""Feature SPECs, comma-separated. A SPEC is NAME or NAME:key=value[,key=value...];
a token with '=' before any ':' continues the previous SPEC's options. Examples:
'librosa,egemaps', 'hf-audio:model=TencentGameMate/chinese-hubert-large,chunk_seconds=20',
'hf-text:model=./models/roberta'. Model ids or local paths both work. `cli.py features` lists
extractors and options. Default: the offline set '{DEFAULT_FEATURES}'."""


_D = ExtractConfig()  # the defaults of every option below


class JobsType(click.ParamType):
    """--jobs: "auto" or an integer (its range is checked with every other option, ExtractConfig.validate)."""

    name = "auto|N"

    def convert(self, value, param, ctx):
        text = str(value).strip().lower()
        if text == "auto":
            return "auto"
        try:
            return int(text)
        except ValueError:
            return value


JOBS = JobsType()


@click.command("extract")
@click.argument("video_dir", type=click.Path(file_okay=False, path_type=str))
@click.option("--cache", "cache_dir", default=DEFAULT_CACHE, show_default=True, help="Cache folder (HDF5 shards).")
@click.option("--features", "features", multiple=True, default=_D.features, show_default=False, help=FEATURES_HELP)
@click.option("--transcripts", type=click.Path(dir_okay=False), default=_D.transcripts,
              help="CSV with name,text (or MER's name,chinese,english with --text-column).")
@click.option("--text-column", default=_D.text_column, help="Transcript column to use (default: 'text').")
@click.option("--fps", type=float, default=_D.fps, show_default=True, help="Frames sampled per second of video (> 0).")
@click.option("--max-frames", type=int, default=_D.max_frames, show_default=True,
              help="Frame cap per clip (>= 1); longer clips get this many frames spread evenly.")
@click.option("--max-side", type=int, default=_D.max_side, show_default=True,
              help="Downscale frames so their longer side is at most this (pixels, >= 1).")
@click.option("--jobs", type=JOBS, default=_D.jobs, show_default=True,
              help="Processes computing clips (>= 1), or auto: one per usable core (one for runs of fewer than "
                   f"{AUTO_MIN_CLIPS} clips, where a worker's start-up costs more than it saves).")
@click.option("--threads", type=int, default=_D.threads, show_default=True,
              help="torch, BLAS, CTranslate2 and decoder threads per process (>= 1): --jobs N uses N x threads "
                   "cores. Values are identical across --jobs for a given --threads.")
@click.option("--device", type=click.Choice(DEVICES), default=_D.device, show_default=True,
              help="Device for neural extractors (auto: cuda when present).")
@click.option("--strict", is_flag=True, default=_D.strict, help="Exit with status 1 when any clip failed.")
@click.option("--retry-failed", is_flag=True, default=_D.retry_failed, help="Try again the clips recorded as failed.")
@click.option("--flush-every", type=int, default=_D.flush_every, show_default=True,
              help="Write a shard after this many clips (also every 10 s; >= 1); bounds the loss on a kill.")
@click.option("--progress/--no-progress", default=_D.progress, show_default=True, help="Show the progress bar.")
@click.option("--scheduler", default=_D.scheduler, metavar="tcp://HOST:PORT|local:N",
              help="Compute the clips on a Dask cluster: the address of its scheduler, or local:N for a local "
                   "cluster of N workers (one per GPU with --device cuda). Default: local processes (--jobs).")
@click.option("--shard", default=_D.shard, metavar="I/N",
              help="Only shard I of N (counted from 1) of the sorted clip ids, for batch arrays (SLURM); "
                   "join the shard caches with `cache merge`.")
@click.option("--extensions", default=",".join(_D.extensions), show_default=True,
              help="File extensions taken as media under VIDEO_DIR, comma-separated (replaces the list).")
@click.option("--verbose", is_flag=True, default=_D.verbose,
              help="Print what libraries print (MediaPipe/TFLite lines, warnings) and every note; "
                   "otherwise they go to CACHE/extract.log.")
@click.pass_context
def extract_cmd(ctx, video_dir, cache_dir, **options):
    """Decode every media file under VIDEO_DIR once and cache the requested features.

    Re-running is cheap: cached clips are skipped without decoding; a new SPEC computes only that
    feature set; a killed run resumes where it stopped.
    """
    from .api import extract

    # `cli.py --verbose extract ...` (a flag of the group, where it has one) counts too
    options["verbose"] = bool(options["verbose"] or ctx.find_root().params.get("verbose"))
    if options["verbose"]:
        _show_notes()
    try:
        summary = extract(video_dir, cache_dir, ExtractConfig(**options))
    except (SpecError, UsageError) as exc:
        raise click.UsageError(str(exc)) from None
    except CacheError as exc:  # a cache it cannot use or write (disk full, read-only): one line, no traceback
        raise click.ClickException(str(exc)) from None
    except OSError as exc:  # a file system error no layer below named: the file and the cause
        if exc.errno is None:
            raise
        where = exc.filename or cache_dir
        raise click.ClickException(f"{where}: {exc.strerror or exc}") from None
    _print_summary(summary)
    code = summary.exit_code(options["strict"])
    if code:
        sys.exit(code)


def _show_notes() -> None:
    """--verbose: the tool's INFO records (skipped files, per-clip notes) reach the terminal too."""
    moe = logging.getLogger("moe")
    if moe.getEffectiveLevel() > logging.INFO:
        moe.setLevel(logging.INFO)
    if not moe.handlers and not logging.getLogger().handlers:  # nobody prints them yet
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        moe.addHandler(handler)


def _print_summary(s) -> None:
    click.echo(f"\n{s.clips} clips in {s.seconds:.1f} s: {s.skipped} already cached, {s.decoded} decoded"
               + (f" on {s.workers} workers" if s.workers > 1 else "")
               + (f", {s.retried} retried after a worker died" if s.retried else "")
               + (" (interrupted: re-run to resume)" if s.interrupted else ""))
    for key in s.keys:
        click.echo(f"  {key:<28} {key.rsplit('-', 1)[0]:<10} done {s.done[key]:>6}  failed {s.failed[key]:>5}")
    if s.failures:
        click.echo(f"{len(s.failures)} failures (id, feature set, reason):")
        for cid, key, reason in s.failures[:20]:
            click.echo(f"  {cid} [{key}]: {reason}")
        if len(s.failures) > 20:
            click.echo(f"  ... {len(s.failures) - 20} more: see `cli.py cache info --cache {s.cache} --failures`")
    if s.files_skipped:
        reasons = Counter(why for _, why in s.files_skipped)
        click.echo(f"skipped {len(s.files_skipped)} files under {s.video_dir}: "
                   + "; ".join(f"{n} {why}" for why, n in reasons.most_common()))
        for path, why in s.files_skipped[:5]:
            click.echo(f"  {path}: {why}")
        if len(s.files_skipped) > 5:
            click.echo(f"  ... {len(s.files_skipped) - 5} more")
    if s.extensions_seen:
        click.echo("extensions seen: " + ", ".join(f"{ext or '(none)'} {n}" for ext, n in s.extensions_seen.items()))
    by_note: dict[str, dict[str, set]] = {}
    for cid, key, note in s.clip_notes:
        entry = by_note.setdefault(note.split(" (", 1)[0], {"ids": set(), "sets": set()})
        entry["ids"].add(cid)
        entry["sets"].add(key.rsplit("-", 1)[0])
    for what, entry in by_note.items():
        ids = sorted(entry["ids"])
        click.echo(f"note: {what}: {len(ids)} clips ({', '.join(ids[:5])}{', ...' if len(ids) > 5 else ''}); "
                   f"stored anyway in {', '.join(sorted(entry['sets']))}")
    for note in s.notes:
        click.echo(f"note: {note}")
    if s.log is not None:
        click.echo(f"log: {s.log}")
    click.echo(f"cache: {s.cache}")


@click.command("features")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def features_cmd(as_json):
    """List every registered extractor: modality, output kind, needs and config defaults."""
    rows = [describe(cls) for _, cls in sorted(load_all().items())]
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    for r in rows:
        opts = ", ".join(f"{k}={v}" for k, v in r["defaults"].items()) or "(no options)"
        click.echo(f"{r['name']:<12} {r['modality']:<9} {r['kind']:<7} needs {'+'.join(r['needs']) or '-':<12} "
                   f"{r['description']}")
        click.echo(f"{'':<12} options: {opts}")
    click.echo(f"\ndefault set (extract with no --features): {DEFAULT_FEATURES}")


def _short(value, keep: int = 3):
    """Long lists (channel names...) cut to their first items for the text view; --json has all."""
    if isinstance(value, dict):
        return {k: _short(v, keep) for k, v in value.items()}
    if isinstance(value, list) and len(value) > 2 * keep:
        return value[:keep] + [f"... {len(value) - keep} more (--json lists all)"]
    return value


@click.group("cache")
def cache_group():
    """Inspect a feature cache."""


@cache_group.command("merge")
@click.argument("sources", nargs=-1, required=True, type=click.Path(file_okay=False, exists=True), metavar="CACHE...")
@click.option("--into", required=True, type=click.Path(file_okay=False), help="Cache to merge into (created if needed).")
def cache_merge(sources, into):
    """Join shard caches (from `extract --shard i/n`) into one: exact duplicates are accepted; a feature
    set whose config differs, or a clip with two different values, is refused before anything is copied."""
    from .cache_merge import merge

    try:
        rep = merge(sources, into)
    except CacheError as exc:
        raise click.ClickException(str(exc)) from None
    for key, r in rep.sets.items():
        click.echo(f"  {key:<28} {r['shards']:>4} shards copied, {r['clips']:>7} new clips, "
                   f"{r['duplicates']:>5} identical duplicates")
    click.echo(f"merged {len(sources)} caches into {into} in {rep.seconds:.1f} s")


@cache_group.command("verify")
@click.option("--cache", "cache_dir", default="cache", show_default=True, help="Cache folder.")
def cache_verify(cache_dir):
    """Open every shard of every feature set and check its ids, rows, dims and meta.json; exit 1 on damage."""
    from .cache_merge import verify

    try:
        rep = verify(cache_dir)
    except CacheError as exc:
        raise click.ClickException(str(exc)) from None
    for key, r in rep.sets.items():
        click.echo(f"  {key:<28} {r['shards']:>4} shards, {r['clips']:>7} clips, {r['failed']:>5} failed")
    for p in rep.problems:
        click.echo(f"problem: {p}", err=True)
    click.echo(f"cache {cache_dir}: {len(rep.sets)} feature sets, "
               + ("no problem found" if rep.ok else f"{len(rep.problems)} problems"))
    if not rep.ok:
        raise SystemExit(1)


@cache_group.command("info")
@click.option("--cache", "cache_dir", default="cache", show_default=True, help="Cache folder.")
@click.option("--failures", "all_failures", is_flag=True, help="List every failure (default: first 10 per set).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (feature sets, counts, provenance, failures).")
def cache_info(cache_dir, all_failures, as_json):
    """Feature sets in the cache: counts, dims, provenance and failures."""
    try:
        _cache_info(cache_dir, all_failures, as_json)
    except CacheError as exc:  # an unreadable shard, a set that keeps changing: one line, no traceback
        raise click.ClickException(str(exc)) from None


def _cache_info(cache_dir, all_failures, as_json):
    cache = FeatureCache(cache_dir)
    keys = cache.keys()
    if not keys:
        raise click.ClickException(f"no feature sets in {cache_dir} (run `cli.py extract VIDEO_DIR --cache {cache_dir}`)")
    report = []
    fs_sources = {}
    all_ids: set[str] = set()  # every id the cache knows, done or failed (cache.all_ids() would re-read the shards)
    for key in keys:
        fs = FeatureSet(cache.root / key)
        meta = fs.meta
        done, failed = fs.done_ids(), fs.failures()
        all_ids.update(done)
        all_ids.update(failed)
        report.append({"key": key, "extractor": meta.get("extractor"), "kind": fs.kind, "modality": meta.get("modality"),
                       "clips": len(done), "failed": failed, "dims": fs.dims(),
                       "config": meta.get("config"), "decode": meta.get("decode"), "model": meta.get("model"),
                       "libraries": meta.get("libraries"), "created": meta.get("created"),
                       "shards": len(fs.shards())})
        fs_sources[key] = fs.sources()
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    click.echo(f"cache {cache_dir}: {len(keys)} feature sets, {len(all_ids)} clip ids")
    for r in report:
        dims = "x".join(map(str, r["dims"])) if r["dims"] else "?"
        click.echo(f"\n{r['key']}  ({r['extractor']}, {r['modality']}, {r['kind']} {dims})")
        click.echo(f"  clips {r['clips']}, failed {len(r['failed'])}, shards {r['shards']}, created {r['created']}")
        click.echo(f"  config {json.dumps(r['config'], sort_keys=True)}  decode {json.dumps(r['decode'], sort_keys=True)}")
        if r["model"]:
            click.echo(f"  model {json.dumps(_short(r['model']), sort_keys=True)}")
        libs = ", ".join(f"{k} {v}" for k, v in (r["libraries"] or {}).items() if v)
        click.echo(f"  libraries {libs}")
        sources = Counter(fs_sources[r["key"]].values())
        if sources:
            click.echo("  inputs by source: " + ", ".join(f"{src} {n}" for src, n in sorted(sources.items())))
        fails = sorted(r["failed"].items())
        if fails:
            reasons = Counter(reason for _, reason in fails)
            click.echo("  failures by cause: " + "; ".join(f"{n} x {reason}" for reason, n in reasons.most_common(5)))
            for cid, reason in fails if all_failures else fails[:10]:
                click.echo(f"    {cid}: {reason}")
            if not all_failures and len(fails) > 10:
                click.echo(f"    ... {len(fails) - 10} more (--failures lists all)")
