"""``python -m llink.data.harvest --lang km --out en-km.jsonl.gz``: build a corpus."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from llink.data.harvest import SOURCES, harvest


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run :func:`llink.data.harvest.harvest`, print the counts as JSON."""
    parser = argparse.ArgumentParser(prog="python -m llink.data.harvest", description=__doc__)
    parser.add_argument("--lang", required=True, help="language code, e.g. km, th")
    parser.add_argument("--out", required=True, type=Path, help="output .jsonl.gz")
    parser.add_argument("--sources", default=",".join(SOURCES), help="comma-separated")
    parser.add_argument("--workdir", type=Path, default=None, help="folder for downloads")
    parser.add_argument("--keep-workdir", action="store_true", help="keep downloads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    start = time.monotonic()
    counts = harvest(
        args.lang,
        args.out,
        sources=tuple(s for s in args.sources.split(",") if s),
        workdir=args.workdir,
        keep_workdir=args.keep_workdir,
    )
    print(json.dumps(counts, indent=2))
    logging.info("wrote %s in %.0f s", args.out, time.monotonic() - start)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
