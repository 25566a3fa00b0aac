"""CIFAR-100 to a machine that cannot download it, in parts small enough to travel with the working tree.

A lent GPU machine receives the repository's working tree plus a few carried paths, 64 MiB in all per call, and
reaches no network. The three dataset files (186 MB) are packed into one xz stream (a tar of
``cifar-100-python/{meta,test,train}``), compressed with a delta filter before LZMA2: the byte 32 positions back
is the same pixel one image row up, so the filter turns rows into small differences that LZMA2 packs about 8%
smaller than the raw bytes. The stream is cut into equal parts under the size that still fits beside the working
tree, described by a manifest (each part's and each file's md5).

    python -m plugconv_lite.devdata split       # here: .devdata/cifar100.tar.xz.partKofN + manifest.json
    python -m plugconv_lite.devdata size        # what each device call carries, against the 64 MiB limit
    python -m plugconv_lite.devdata receive     # there, in each call: check the parts that came, keep them
    python -m plugconv_lite.devdata assemble    # there, in the last call: join, unpack, md5-check every file

``receive`` copies each part that passes its md5 check out of the repository (``<cache>/devdata``), so a part
survives whatever the next call does to the working tree; ``assemble`` takes parts from either place, verifies
every file against ``data.FILES`` and only then moves the files into the data root (``PLUGCONV_DATA``, else the
library cache), where ``load_cifar100`` finds them.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import io
import json
import lzma
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Iterable, Optional, Sequence

from .data import FILES, FOLDER, cache_dir, check_files, data_root, md5sum

MIB = 2 ** 20
CALL_LIMIT = 64 * MIB      # what one device call may carry: working tree + carried paths
PART_CAP = 60 * MIB        # never a larger part, whatever the tree
HEADROOM = 1 * MIB         # for the manifest, files added before the calls, rounding
ARCHIVE = "cifar100.tar.xz"
MANIFEST = "manifest.json"
FILTERS = [{"id": lzma.FILTER_DELTA, "dist": 32}, {"id": lzma.FILTER_LZMA2, "preset": 6}]
FORMAT = "plugconv-devdata"


def repo_dir() -> Path:
    from .results import repo_root
    root = repo_root()
    return root if root is not None else Path.cwd()


def default_dir() -> Path:
    """``.devdata/`` in the repository (git-ignored; the device tool carries paths from it)."""
    return repo_dir() / ".devdata"


def stash_dir() -> Path:
    return cache_dir() / "devdata"


def tree_bytes(root: Optional[Path] = None) -> int:
    """Bytes of what a device call sends besides carried paths: tracked files and untracked files git does not
    ignore (the device tool's working tree)."""
    root = Path(root) if root is not None else repo_dir()
    out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, check=True).stdout
    total = 0
    for rel in filter(None, out.decode().split("\0")):
        p = root / rel
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total


def max_part_bytes(tree: int) -> int:
    """The largest part that travels beside ``tree`` bytes of working tree within CALL_LIMIT."""
    limit = min(PART_CAP, CALL_LIMIT - tree - HEADROOM)
    if limit < MIB:
        raise ValueError(f"the working tree is {tree / MIB:.1f} MiB: no room for a data part in a "
                         f"{CALL_LIMIT // MIB} MiB call")
    return limit


def _git_info(root: Path) -> dict:
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": commit, "dirty": dirty} if commit else {}


def _atomic_json(obj: dict, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def split(data: Optional[Path] = None, out: Optional[Path] = None, max_part: Optional[int] = None,
          files: dict = FILES, filters: Sequence[dict] = FILTERS, progress: bool = True) -> dict:
    """Pack ``<data>/cifar-100-python`` (each file md5-checked first) into parts under ``out``; returns the
    manifest (also written to ``out/manifest.json``). ``max_part`` defaults to what fits beside this checkout's
    working tree in one call (``max_part_bytes``). Old parts in ``out`` are removed first."""
    src = data_root(data) / FOLDER
    problems = check_files(src) if files is FILES else {n: "missing" for n in files if not (src / n).is_file()}
    if problems:
        raise ValueError(f"data={src} is not an intact CIFAR-100 folder: {problems}")
    out = Path(out) if out is not None else default_dir()
    out.mkdir(parents=True, exist_ok=True)
    for old in list(out.glob(f"{ARCHIVE}.part*")) + [out / MANIFEST]:
        old.unlink(missing_ok=True)
    max_part = max_part if max_part is not None else max_part_bytes(tree_bytes())
    if max_part < 1:
        raise ValueError(f"max_part={max_part} must be >= 1 byte")
    archive = out / f".{ARCHIVE}.{os.getpid()}.tmp"
    try:
        if progress:
            print(f"compressing {src} (xz, delta filter; a few minutes) ...", flush=True)
        with open(archive, "wb") as raw, lzma.LZMAFile(raw, "wb", format=lzma.FORMAT_XZ, filters=filters) as xz, \
                tarfile.open(fileobj=xz, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for name in sorted(files):
                info = tar.gettarinfo(str(src / name), arcname=f"{FOLDER}/{name}")
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mtime = 0
                with open(src / name, "rb") as f:
                    tar.addfile(info, f)
        size = archive.stat().st_size
        n = max(1, math.ceil(size / max_part))
        per = math.ceil(size / n)
        parts = []
        with open(archive, "rb") as f:
            for i in range(n):
                name = f"{ARCHIVE}.part{i + 1}of{n}"
                with open(out / name, "wb") as g:
                    g.write(f.read(per))
                parts.append({"name": name, "size": (out / name).stat().st_size, "md5": md5sum(out / name)})
        manifest = {"format": FORMAT, "version": 1, "archive": {"name": ARCHIVE, "size": size,
                                                                "md5": md5sum(archive),
                                                                "filters": "delta(dist=32) + lzma2(preset 6)"},
                    "parts": parts, "files": {n: list(v) for n, v in files.items()}, "folder": FOLDER,
                    "git": _git_info(repo_dir()),
                    "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        _atomic_json(manifest, out / MANIFEST)
    finally:
        archive.unlink(missing_ok=True)
    if progress:
        raw_size = sum(v[1] for v in files.values())
        print(f"{raw_size / MIB:.1f} MiB -> {size / MIB:.1f} MiB in {n} parts of <= {per / MIB:.1f} MiB in {out}")
    return manifest


def read_manifest(folder: Optional[Path] = None) -> Optional[dict]:
    """The manifest in ``folder`` (default ``.devdata/``), or None."""
    path = (Path(folder) if folder is not None else default_dir()) / MANIFEST
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not a devdata manifest (format={manifest.get('format')!r})")
    return manifest


def _locate(manifest: dict, places: Iterable[Path]) -> dict[str, Optional[Path]]:
    """Each part's file that passes its size and md5 check, from the first place that has one (else None)."""
    found = {}
    for part in manifest["parts"]:
        found[part["name"]] = None
        for place in places:
            p = Path(place) / part["name"]
            if p.is_file() and p.stat().st_size == part["size"] and md5sum(p) == part["md5"]:
                found[part["name"]] = p
                break
    return found


def receive(folder: Optional[Path] = None, stash: Optional[Path] = None, progress: bool = True) -> dict:
    """Check the parts that arrived in ``folder`` and keep a copy of each good one in ``stash`` (outside the
    repository). Returns {part name: path or None}."""
    folder = Path(folder) if folder is not None else default_dir()
    stash = Path(stash) if stash is not None else stash_dir()
    manifest = read_manifest(folder)
    if manifest is None:
        raise ValueError(f"no {MANIFEST} in {folder}: carry .devdata/{MANIFEST} with every part")
    stash.mkdir(parents=True, exist_ok=True)
    _atomic_json(manifest, stash / MANIFEST)
    found = _locate(manifest, [stash, folder])
    for name, path in found.items():
        if path is not None and path.parent != stash:
            tmp = stash / f".{name}.tmp"
            shutil.copyfile(path, tmp)
            os.replace(tmp, stash / name)
            found[name] = stash / name
    if progress:
        have = [n for n, p in found.items() if p is not None]
        print(f"devdata: {len(have)} of {len(found)} parts here and intact ({', '.join(have) or 'none'}); "
              f"missing: {', '.join(n for n, p in found.items() if p is None) or 'none'}")
    return found


def assemble(folder: Optional[Path] = None, stash: Optional[Path] = None, to: Optional[Path] = None,
             files: dict = FILES, progress: bool = True) -> Path:
    """Join the parts (from ``folder`` or ``stash``), unpack, md5-check every file against ``files`` and only then
    move them into ``<to>/cifar-100-python`` (default: the data root). Returns the data root. Does nothing if the
    files there are already intact."""
    to = data_root(to)
    dest = to / FOLDER
    if files is FILES and not check_files(dest):
        if progress:
            print(f"devdata: CIFAR-100 already intact in {dest}")
        return to
    folder = Path(folder) if folder is not None else default_dir()
    stash = Path(stash) if stash is not None else stash_dir()
    manifest = read_manifest(folder) or read_manifest(stash)
    if manifest is None:
        raise ValueError(f"no {MANIFEST} in {folder} or {stash}")
    found = _locate(manifest, [folder, stash])
    missing = [n for n, p in found.items() if p is None]
    if missing:
        raise ValueError(f"parts missing or corrupt: {', '.join(missing)} (looked in {folder} and {stash}); carry "
                         "them again")
    to.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".devdata-", dir=to))
    try:
        with _Joined([found[p["name"]] for p in manifest["parts"]]) as joined, \
                lzma.LZMAFile(joined, "rb") as xz, tarfile.open(fileobj=xz, mode="r|") as tar:
            wanted = {f"{FOLDER}/{n}" for n in files}
            for member in tar:
                if member.name in wanted and member.isfile():
                    with open(tmp / Path(member.name).name, "wb") as f:
                        shutil.copyfileobj(tar.extractfile(member), f, 1 << 20)
        problems = {}
        for name, (md5, size) in files.items():
            p = tmp / name
            if not p.is_file():
                problems[name] = "missing from the archive"
            elif p.stat().st_size != size or md5sum(p) != md5:
                problems[name] = "md5 or size mismatch"
        if problems:
            raise ValueError(f"the assembled files fail their checks: {problems}")
        dest.mkdir(parents=True, exist_ok=True)
        for name in files:
            os.replace(tmp / name, dest / name)  # each file moved only after all of them were verified
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if progress:
        print(f"devdata: CIFAR-100 assembled and md5-verified in {dest} (data root {to})")
    return to


class _Joined(io.RawIOBase):
    """The concatenation of files, read sequentially as one stream."""

    def __init__(self, paths: Sequence[Path]):
        self._paths, self._f = list(paths), None

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while True:
            if self._f is None:
                if not self._paths:
                    return 0
                self._f = open(self._paths.pop(0), "rb")
            n = self._f.readinto(b)
            if n:
                return n
            self._f.close()
            self._f = None

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
        super().close()


def call_sizes(folder: Optional[Path] = None, tree: Optional[int] = None) -> list[dict]:
    """What each device call carries: the working tree, the manifest and one part; against CALL_LIMIT."""
    folder = Path(folder) if folder is not None else default_dir()
    manifest = read_manifest(folder)
    if manifest is None:
        raise ValueError(f"no {MANIFEST} in {folder}: run `python -m plugconv_lite.devdata split` first")
    tree = tree_bytes() if tree is None else tree
    m = (folder / MANIFEST).stat().st_size
    return [{"call": i + 1, "part": p["name"], "tree": tree, "manifest": m, "part_bytes": p["size"],
             "total": tree + m + p["size"], "fits": tree + m + p["size"] < CALL_LIMIT}
            for i, p in enumerate(manifest["parts"])]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plugconv_lite.devdata", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("split", help="pack the CIFAR-100 folder into parts under .devdata/")
    sp.add_argument("--data", help="the data root (the folder holding cifar-100-python/); default: $PLUGCONV_DATA")
    sp.add_argument("--out", help="default: .devdata/ in the repository")
    sp.add_argument("--max-part-mib", type=float, help="default: what fits beside the working tree in one call")
    sz = sub.add_parser("size", help="what each device call carries, against the 64 MiB limit")
    sz.add_argument("--dir", help="default: .devdata/")
    rc = sub.add_parser("receive", help="check the parts that arrived and keep them outside the repository")
    rc.add_argument("--dir", help="default: .devdata/")
    rc.add_argument("--stash", help="default: <cache>/devdata")
    asm = sub.add_parser("assemble", help="join, unpack and md5-verify; print the data root")
    asm.add_argument("--dir", help="default: .devdata/")
    asm.add_argument("--stash", help="default: <cache>/devdata")
    asm.add_argument("--to", help="data root to fill; default: $PLUGCONV_DATA, else the library cache")
    args = parser.parse_args(argv)
    try:
        if args.command == "split":
            split(args.data, args.out, None if args.max_part_mib is None else int(args.max_part_mib * MIB))
            args.command, args.dir = "size", args.out
        if args.command == "size":
            ok = True
            for c in call_sizes(args.dir):
                ok &= c["fits"]
                print(f"call {c['call']}: tree {c['tree'] / MIB:.2f} MiB + manifest + {c['part']} "
                      f"{c['part_bytes'] / MIB:.2f} MiB = {c['total'] / MIB:.2f} MiB "
                      f"({'fits' if c['fits'] else 'TOO LARGE'}: limit {CALL_LIMIT // MIB} MiB)")
            return 0 if ok else 1
        if args.command == "receive":
            receive(args.dir, args.stash)
            return 0
        if args.command == "assemble":
            root = assemble(args.dir, args.stash, args.to)
            print(f"PLUGCONV_DATA={root}")
            return 0
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
