"""Fetch dataset files through a list of mirrors with pooch, verify their MD5, and keep a lock file.

Sources are tried in order: each mirror (``<mirror>/<name>``), then the official URL. A mirror is an http(s)
or ftp URL (fetched by pooch: progress bar, retries, download to a temporary file), a ``file://`` URL or a
plain directory (copied, for air-gapped teams). Every file lands in ``<dest>/.partial/`` first and is renamed
into ``<dest>`` only once its MD5 matches, so ``<dest>`` never holds a partial or unverified file.

``<dest>/checksums.lock.json`` maps each file name to ``{"md5", "size", "mtime_ns"}``: a registry entry
without a published hash has its hash recorded there on first download and verified on every later run; a file
whose size and mtime match its lock entry is trusted without re-hashing (a 19 GB archive is not read on every
run).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from xpvision.atomic import write_json
from xpvision.data.registry import RemoteFile, dataset_files
from xpvision.errors import DataError

LOCK_NAME = "checksums.lock.json"
_REMOTE_SCHEMES = ("http", "https", "ftp")
log = logging.getLogger(__name__)


def md5sum(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex MD5 of a file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_dataset(name: str, dest: str | os.PathLike, mirrors: Sequence[str] = (), *,
                  only: tuple[str, ...] | None = None, use_official: bool = True, progress: bool = True,
                  retries: int = 2) -> dict[str, Path]:
    """Fetch the files of registry dataset ``name`` (see :data:`xpvision.data.registry.DATASETS`) into
    ``dest``.

    Returns ``{file name: local path}``. See :func:`fetch_files` for the arguments.
    """
    return fetch_files(dataset_files(name, only), dest, mirrors, use_official=use_official, progress=progress,
                       retries=retries)


def fetch_files(files: Sequence[RemoteFile], dest: str | os.PathLike, mirrors: Sequence[str] = (), *,
                use_official: bool = True, progress: bool = True, retries: int = 2) -> dict[str, Path]:
    """Make every file of ``files`` present and verified in ``dest``; return ``{name: path}``.

    Args:
        mirrors: tried in order before the official URL; http(s)/ftp URL, ``file://`` URL or directory.
        use_official: also try each file's official URL after the mirrors.
        progress: show pooch's progress bar for remote downloads.
        retries: extra attempts per remote source after a failed download (pooch's ``retry_if_failed``).

    Raises:
        DataError: no source delivered a file whose MD5 matches (the message lists every attempt, with the
            expected and actual hash for checksum failures).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    lock_path = dest / LOCK_NAME
    lock = _read_lock(lock_path)
    paths = {}
    for remote in files:
        expected = remote.md5 or lock.get(remote.name, {}).get("md5")
        target = dest / remote.name
        if not _present_and_verified(target, expected, lock.get(remote.name)):
            sources = [_mirror_location(m, remote.name) for m in mirrors]
            sources += [remote.url] if use_official else []
            _fetch_one(remote.name, expected, sources, target, progress=progress, retries=retries)
        stat = target.stat()
        lock[remote.name] = {"md5": expected or md5sum(target), "size": stat.st_size,
                             "mtime_ns": stat.st_mtime_ns}
        write_json(lock_path, lock)
        paths[remote.name] = target
    return paths


def _read_lock(lock_path: Path) -> dict:
    if not lock_path.exists():
        return {}
    try:
        lock = json.loads(lock_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"lock file {lock_path} is not valid JSON ({e}); fix or delete it") from e
    if not isinstance(lock, dict):
        raise DataError(f"lock file {lock_path}: expected a JSON object of file entries, got "
                        f"{type(lock).__name__}")
    return lock


def _present_and_verified(target: Path, expected: str | None, entry: dict | None) -> bool:
    """True when ``target`` exists and matches ``expected`` (trusting an unchanged lock entry's hash)."""
    if not target.is_file():
        return False
    stat = target.stat()
    unchanged = (entry is not None and entry.get("size") == stat.st_size
                 and entry.get("mtime_ns") == stat.st_mtime_ns)
    actual = entry["md5"] if unchanged else md5sum(target)
    if expected is None or actual == expected:
        return True
    log.warning("%s is present but its MD5 %s differs from %s: fetching it again", target, actual, expected)
    return False


def _mirror_location(mirror: str, name: str) -> str:
    """``<mirror>/<name>``: a URL for remote mirrors, a local path for ``file://`` URLs and directories."""
    scheme = urllib.parse.urlparse(mirror).scheme
    if scheme in _REMOTE_SCHEMES:
        return mirror.rstrip("/") + "/" + urllib.parse.quote(name)
    if scheme == "file":
        return str(Path(urllib.request.url2pathname(urllib.parse.urlparse(mirror).path)) / name)
    return str(Path(mirror).expanduser() / name)


def _fetch_one(name: str, expected: str | None, sources: list[str], target: Path, *, progress: bool,
               retries: int) -> None:
    """Try ``sources`` in order until one gives a file with the expected MD5; rename it onto ``target``."""
    if not sources:
        raise DataError(f"{name}: not present in {target.parent} and no source to fetch it from "
                        "(no mirrors given and use_official is off)")
    staging = target.parent / ".partial"
    staging.mkdir(exist_ok=True)
    failures = []
    for source in sources:
        partial = staging / name
        partial.unlink(missing_ok=True)
        try:
            _copy_or_download(source, partial, progress=progress, retries=retries)
        except OSError as e:
            failures.append(f"{source}: {type(e).__name__}: {e}")
            partial.unlink(missing_ok=True)
            continue
        actual = md5sum(partial)
        if expected is not None and actual != expected:
            partial.unlink()
            failures.append(f"{source}: MD5 mismatch: expected {expected}, actual {actual} (partial file "
                            "deleted)")
            continue
        os.replace(partial, target)
        return
    raise DataError(f"could not fetch {name} into {target.parent}; tried:\n  " + "\n  ".join(failures))


def _copy_or_download(source: str, partial: Path, *, progress: bool, retries: int) -> None:
    if urllib.parse.urlparse(source).scheme not in _REMOTE_SCHEMES:
        if not Path(source).is_file():
            raise FileNotFoundError(f"no such file {source}")
        tmp = partial.with_name(partial.name + ".copying")
        try:
            shutil.copyfile(source, tmp)
            os.replace(tmp, partial)
        finally:
            tmp.unlink(missing_ok=True)
        return
    import pooch

    pooch.get_logger().setLevel(logging.WARNING)
    fetcher = pooch.create(path=partial.parent, base_url="", registry={partial.name: None},
                           urls={partial.name: source}, retry_if_failed=retries)
    fetcher.fetch(partial.name, downloader=pooch.HTTPDownloader(progressbar=progress, timeout=60)
                  if source.startswith("http") else None)
