"""General-domain English sentences: the usage examples of WordNet 3.0 (Debian ``wordnet-base``).

Everything llink harvests in foreign languages is software text. The encoder maps a
sentence and its translations close together, so plain English sentences read by
the encoder are valid Stage A / Stage B inputs in every domain English covers
(``data.english``). WordNet's examples are short everyday sentences written by
lexicographers ("We had to swim for 20 minutes to reach the shore"), ~29k of them
with five words or more, under the WordNet 3.0 licence (permissive, notice kept in
``en-wordnet.PROVENANCE.md``).

    python -m llink.data.harvest.wordnet --out src/llink/corpora/en-wordnet.txt.gz

downloads ``wordnet-base`` with ``apt-get download`` (or reads ``--data DIR``, a folder
holding ``data.noun`` etc.) and writes one sentence per line, sorted, gzipped.
"""

from __future__ import annotations

import argparse
import gzip
import subprocess
import tempfile
from pathlib import Path

PARTS = ("noun", "verb", "adj", "adv")
MIN_WORDS = 5


def examples(data_line: str) -> list[str]:
    """The quoted usage examples of one ``data.*`` line (after the ``|`` gloss marker)."""
    if "| " not in data_line:
        return []
    gloss = data_line.split("| ", 1)[1]
    out = []
    for part in gloss.split(";"):
        part = part.strip()
        if part.startswith('"'):
            text = " ".join(part.strip().strip('"').split())
            if len(text.split()) >= MIN_WORDS:
                out.append(text[0].upper() + text[1:])
    return out


def read_examples(folder: Path) -> list[str]:
    """Distinct example sentences of all parts of speech, sorted."""
    seen: set[str] = set()
    for pos in PARTS:
        with (folder / f"data.{pos}").open(encoding="latin-1") as fh:
            for line in fh:
                if not line.startswith("  "):  # licence header lines start with spaces
                    seen.update(examples(line))
    return sorted(seen)


def fetch(workdir: Path) -> Path:
    """``apt-get download wordnet-base`` and unpack it; return the folder of data files."""
    subprocess.run(["apt-get", "download", "wordnet-base"], cwd=workdir, check=True,
                   capture_output=True)
    deb = next(workdir.glob("wordnet-base_*.deb"))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(workdir / "x")], check=True)
    return workdir / "x" / "usr" / "share" / "wordnet"


def build(out: Path, data: Path | None = None) -> int:
    """Write the sentences to ``out`` (gzipped text, one per line); return how many."""
    with tempfile.TemporaryDirectory() as tmp:
        sentences = read_examples(data or fetch(Path(tmp)))
    out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(filename="", mode="wb", fileobj=out.open("wb"), mtime=0) as fh:
        fh.write(("\n".join(sentences) + "\n").encode("utf-8"))
    return len(sentences)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--data", type=Path, help="folder with WordNet's data.* files (no apt)")
    args = ap.parse_args()
    print(f"{build(args.out, args.data)} sentences -> {args.out}")


if __name__ == "__main__":
    main()
