"""Fetch Debian packages without installing anything: ``apt-get download`` + ``dpkg-deb``.

All apt state lives in a private folder inside the work folder (its own package lists
and, when asked, Debian's *Contents* indices, fetched by ``apt-get update`` with a
private configuration): the system's apt state is read-only to us and nothing is
installed. A package is downloaded with ``apt-get download name=version``, its data
archive is streamed out of ``dpkg-deb --fsys-tarfile`` and only the files the caller
asks for are written (plus the package's ``copyright`` file); the ``.deb`` is then
deleted. This is ``dpkg-deb -x`` restricted to a few paths: it matters for packages
such as ``enlightenment-data`` (400 MB) that carry one small catalogue.

Which packages carry a file (e.g. ``usr/share/locale/km/LC_MESSAGES/*.mo``) is read
from the archive's Contents indices (what ``apt-file`` reads), enabled for our private
lists only.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

from tqdm import tqdm

from llink.data.harvest.licences import licence_from_copyright


class HarvestError(RuntimeError):
    """A package could not be found, downloaded or unpacked."""


@dataclass(frozen=True)
class PackageInfo:
    """A package's candidate version and download size, as apt reports them."""

    name: str
    version: str
    size: int = 0


@dataclass(frozen=True)
class FetchedPackage:
    """Files kept from one unpacked package, laid out under ``root`` as in the package.

    ``doc_link`` is where ``/usr/share/doc/<name>`` points when the package shares
    another package's documentation folder (and so has no ``copyright`` of its own).
    """

    name: str
    version: str
    root: Path
    doc_link: str = ""

    def licence(self, translations: Sequence[str] = ()) -> str:
        """The licence its ``copyright`` file gives the ``translations`` paths (or ``*``)."""
        copyright_file = self.root / "usr/share/doc" / self.name / "copyright"
        if copyright_file.is_file():
            text = copyright_file.read_text(encoding="utf-8", errors="replace")
            return licence_from_copyright(text, translations)
        if self.doc_link:
            return f"see the copyright file of {self.doc_link.rstrip('/').split('/')[-1]}"
        return "unknown (no copyright file)"


class PackageArchive(Protocol):
    """Where packages come from; :class:`AptArchive` is the real one, tests inject fakes."""

    def available(self, packages: Iterable[str]) -> dict[str, PackageInfo]:
        """The packages (of those named) that exist, with their candidate versions."""
        ...

    def packages_with_files(self, path_re: re.Pattern[str], hint: str = "") -> list[str]:
        """Sorted names of packages holding a file whose path matches ``path_re``.

        An archive may also offer ``packages_with_files_by(patterns, hint)`` (key →
        sorted names, several patterns in one search, as :class:`AptArchive` does);
        :func:`llink.data.harvest.sources.packages_by_pattern` uses it when present.
        """
        ...

    def fetch(
        self, packages: Sequence[str], dest: Path, keep: Callable[[str], bool], desc: str = ""
    ) -> Iterator[FetchedPackage]:
        """Download and unpack each package into ``dest/<name>``, keeping paths ``keep`` accepts."""
        ...

    def describe(self) -> str:
        """Where packages come from, one line per archive/suite (for the provenance)."""
        ...


_CONTENTS_TARGET = """\
Acquire::IndexTargets::deb::Contents-deb {
  MetaKey "$(COMPONENT)/Contents-$(ARCHITECTURE)";
  ShortDescription "Contents-$(ARCHITECTURE)";
  Description "$(RELEASE)/$(COMPONENT) $(ARCHITECTURE) Contents (deb)";
  flatMetaKey "Contents-$(ARCHITECTURE)";
  flatDescription "$(RELEASE) Contents (deb)";
  KeepCompressed "true";
};
"""


def _apt_helper() -> str:
    """Path of ``apt-helper`` (decompresses any index format apt stores)."""
    for cand in ("/usr/lib/apt/apt-helper", shutil.which("apt-helper")):
        if cand and Path(cand).is_file():
            return cand
    raise HarvestError("apt-helper not found (is this a Debian/Ubuntu system with apt?)")


def _run(cmd: Sequence[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, check=False)


class AptArchive:
    """Debian packages through apt with private lists under ``workdir`` (no root install)."""

    def __init__(self, workdir: Path, batch_bytes: int = 64 << 20) -> None:
        self.workdir = Path(workdir)
        self.batch_bytes = batch_bytes
        self.conf = self.workdir / "apt.conf"
        self.lists = self.workdir / "lists"
        self._indexed: bool | None = None  # None: not fetched; True: with Contents indices

    # -- apt plumbing -------------------------------------------------------------
    def _apt(self, tool: str, *args: str, cwd: Path | None = None) -> str:
        proc = _run([tool, "-c", str(self.conf), *args], cwd=cwd)
        if proc.returncode != 0:
            raise HarvestError(f"{tool} {' '.join(args[:3])} … failed:\n{proc.stderr.strip()}")
        return proc.stdout

    def update(self, contents: bool = False) -> None:
        """``apt-get update`` into the private lists (once; again to add Contents indices)."""
        if self._indexed is True or self._indexed is contents:
            return
        (self.lists / "partial").mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            f'Dir::State::Lists "{self.lists}";\n'
            'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n' + _CONTENTS_TARGET
        )
        enable = "true" if contents else "false"
        self._apt(
            "apt-get",
            "-q",
            "update",
            "-o",
            f"Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled={enable}",
        )
        self._indexed = contents

    def available(self, packages: Iterable[str]) -> dict[str, PackageInfo]:
        names = sorted(set(packages))
        self.update()
        if not names:
            return {}
        proc = _run(["apt-cache", "-c", str(self.conf), "show", "--no-all-versions", *names])
        found: dict[str, PackageInfo] = {}
        for stanza in proc.stdout.split("\n\n"):
            fields = dict(
                line.split(": ", 1)
                for line in stanza.splitlines()
                if ": " in line and line[0] != " "
            )
            if fields.get("Package") in names and "Version" in fields:
                name = fields["Package"]
                found[name] = PackageInfo(name, fields["Version"], int(fields.get("Size", 0)))
        return found

    def packages_with_files(self, path_re: re.Pattern[str], hint: str = "") -> list[str]:
        """Search the Contents indices; ``hint`` is a literal substring every match has."""
        return self.packages_with_files_by({"": path_re}, hint)[""]

    def packages_with_files_by(
        self, patterns: Mapping[str, re.Pattern[str]], hint: str = ""
    ) -> dict[str, list[str]]:
        """For each pattern (by key), the sorted packages holding a matching file.

        One pass over the Contents indices serves every pattern (several languages'
        catalogues); ``hint`` is a literal substring every match of every pattern has.
        """
        self.update(contents=True)
        listing = self._apt(
            "apt-get", "indextargets", "--format", "$(FILENAME)", "Identifier: Contents-deb"
        )
        files = sorted({f for f in listing.split() if Path(f).is_file()})
        if not files:
            raise HarvestError(
                "no Contents index could be fetched from the configured apt sources; "
                "cannot tell which packages carry the files"
            )
        needle = hint.encode()
        found: dict[str, set[str]] = {key: set() for key in patterns}
        for index in files:
            with subprocess.Popen(
                [_apt_helper(), "cat-file", index], stdout=subprocess.PIPE
            ) as proc:
                assert proc.stdout is not None
                for raw in proc.stdout:
                    if needle not in raw:
                        continue
                    path, owners = raw.decode("utf-8", "replace").rsplit(maxsplit=1)
                    for key, path_re in patterns.items():
                        if path_re.search(path):
                            found[key].update(o.rsplit("/", 1)[-1] for o in owners.split(","))
            if proc.returncode != 0:
                raise HarvestError(f"could not read Contents index {index}")
        return {key: sorted(names) for key, names in found.items()}

    def describe(self) -> str:
        self.update()
        listing = self._apt(
            "apt-get",
            "indextargets",
            "--format",
            "$(SITE) $(RELEASE) $(COMPONENT)",
            "Identifier: Packages",
        )
        return "\n".join(sorted(set(filter(None, listing.splitlines()))))

    # -- download + unpack --------------------------------------------------------
    def _download(self, batch: Sequence[PackageInfo], debs: Path) -> dict[str, Path]:
        """``apt-get download`` a batch (retrying one by one on failure); name → .deb path."""
        specs = [f"{p.name}={p.version}" for p in batch]
        if _run(["apt-get", "-c", str(self.conf), "-q", "download", *specs], cwd=debs).returncode:
            for spec in specs:
                if not list(debs.glob(f"{spec.split('=')[0]}_*.deb")):
                    self._apt("apt-get", "-q", "download", spec, cwd=debs)
        paths: dict[str, Path] = {}
        for p in batch:
            hits = sorted(debs.glob(f"{p.name}_*.deb"))
            if len(hits) != 1:
                raise HarvestError(f"expected one downloaded .deb for {p.name}, found {len(hits)}")
            paths[p.name] = hits[0]
        return paths

    def _batches(self, infos: Sequence[PackageInfo]) -> list[list[PackageInfo]]:
        batches: list[list[PackageInfo]] = [[]]
        size = 0
        for info in infos:
            if batches[-1] and size + info.size > self.batch_bytes:
                batches.append([])
                size = 0
            batches[-1].append(info)
            size += info.size
        return [b for b in batches if b]

    def fetch(
        self, packages: Sequence[str], dest: Path, keep: Callable[[str], bool], desc: str = ""
    ) -> Iterator[FetchedPackage]:
        infos = self.available(packages)
        missing = sorted(set(packages) - set(infos))
        if missing:
            raise HarvestError(f"packages not in the apt sources: {', '.join(missing)}")
        ordered = [infos[name] for name in sorted(infos)]
        if not ordered:
            return
        debs = self.workdir / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        _let_apt_write(debs)
        batches = self._batches(ordered)
        total = sum(i.size for i in ordered)
        with (
            ThreadPoolExecutor(max_workers=1) as pool,
            tqdm(total=total, unit="B", unit_scale=True, desc=desc or "packages") as bar,
        ):
            ahead: Future[dict[str, Path]] = pool.submit(self._download, batches[0], debs)
            for i, batch in enumerate(batches):
                paths = ahead.result()
                if i + 1 < len(batches):  # download the next batch while this one unpacks
                    ahead = pool.submit(self._download, batches[i + 1], debs)
                for info in batch:
                    bar.set_postfix_str(info.name, refresh=False)
                    root = dest / info.name
                    doc_link = unpack(paths[info.name], root, info.name, keep)
                    paths[info.name].unlink()
                    bar.update(info.size)
                    yield FetchedPackage(info.name, info.version, root, doc_link)


def _let_apt_write(folder: Path) -> None:
    """As root, hand the download folder to apt's sandbox user so apt can drop privileges."""
    if os.geteuid() != 0:
        return
    try:
        uid = pwd.getpwnam("_apt").pw_uid
    except KeyError:
        return
    os.chown(folder, uid, -1)  # if its parents are closed to _apt, apt runs unsandboxed


def _safe_relpath(name: str) -> str | None:
    path = PurePosixPath(name.removeprefix("./"))
    if path.is_absolute() or ".." in path.parts or not path.parts:
        return None
    return str(path)


def unpack(deb: Path, dest: Path, package: str, keep: Callable[[str], bool]) -> str:
    """Write the regular files of ``deb`` that ``keep`` accepts under ``dest``.

    Streams ``dpkg-deb --fsys-tarfile``; the package's ``copyright`` file is always
    kept. Returns the target of ``/usr/share/doc/<package>`` if that is a symlink.
    """
    doc = f"usr/share/doc/{package}"
    copyright_path = f"{doc}/copyright"
    doc_link = ""
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                rel = _safe_relpath(member.name)
                if rel is None:
                    continue
                if member.issym() and rel == doc:
                    doc_link = member.linkname
                if not member.isfile() or not (rel == copyright_path or keep(rel)):
                    continue
                src = tar.extractfile(member)
                if src is None:
                    continue
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
        while proc.stdout.read(1 << 16):  # the tar's end padding: let dpkg-deb finish
            pass
    if proc.returncode != 0:
        raise HarvestError(f"dpkg-deb could not unpack {deb.name}")
    return doc_link
