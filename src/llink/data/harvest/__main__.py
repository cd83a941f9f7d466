"""``python -m llink.data.harvest --lang km --out en-km.jsonl.gz``: build a corpus.

Several languages in one pass (each package downloaded and unpacked once):
``--lang km,th,dz --out-dir DIR`` writes ``DIR/en-km.jsonl.gz``, ``DIR/en-th.jsonl.gz``, …
each with its ``PROVENANCE.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from llink.data.harvest import (
    SOURCES,
    harvest,
    harvest_many,
    output_paths,
    parse_languages,
    summary_table,
)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the harvest, print the counts as JSON."""
    parser = argparse.ArgumentParser(prog="python -m llink.data.harvest", description=__doc__)
    parser.add_argument("--lang", required=True, help="language code(s), e.g. km or km,th,dz")
    parser.add_argument("--out", type=Path, help="output .jsonl.gz (one language)")
    parser.add_argument(
        "--out-dir", type=Path, help="output folder: DIR/en-LANG.jsonl.gz per language"
    )
    parser.add_argument("--sources", default=",".join(SOURCES), help="comma-separated")
    parser.add_argument("--workdir", type=Path, default=None, help="folder for downloads")
    parser.add_argument("--keep-workdir", action="store_true", help="keep downloads")
    parser.add_argument(
        "--max-bytes",
        type=int,
        default=None,
        help="cap each gzipped corpus at this size (non-sentence-like pairs are left out first)",
    )
    args = parser.parse_args(argv)
    try:
        langs = parse_languages(args.lang)
        if args.out is None and args.out_dir is None:
            raise ValueError("give --out FILE (one language) or --out-dir DIR")
        outs = output_paths(langs, args.out, args.out_dir)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    start = time.monotonic()
    sources = tuple(s for s in args.sources.split(",") if s)
    options = {
        "workdir": args.workdir,
        "keep_workdir": args.keep_workdir,
        "max_bytes": args.max_bytes,
    }
    if args.out is not None:  # one language, one file: the counts as before
        counts = harvest(langs[0], args.out, sources=sources, **options)
        print(json.dumps(counts, indent=2))
        logging.info("wrote %s in %.0f s", args.out, time.monotonic() - start)
        return 0
    all_counts = harvest_many(outs, sources=sources, **options)
    print(json.dumps(all_counts, indent=2))
    print(summary_table(all_counts), file=sys.stderr)
    logging.info("wrote %s in %.0f s", ", ".join(map(str, outs.values())), time.monotonic() - start)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
