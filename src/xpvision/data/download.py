"""Fetch dataset files through a list of mirrors with pooch, verify their MD5, and keep a lock file.

Sources are tried in order: each mirror (``<mirror>/<name>``), then the official URL. A mirror is an http(s)
or ftp URL (fetched by pooch: progress bar, retries, download to a temporary file), a ``file://`` URL or a
plain directory. A file on a local mirror (directory or ``file://``) is verified and read where it is, never
copied: the lock entry records its path. A downloaded file lands in ``<dest>/.partial/`` first and is renamed
into ``<dest>`` only once its MD5 matches, so ``<dest>`` never holds a partial or unverified file.

A file with a ``content_md5`` (the MNIST-family ``.gz`` files) may also be served uncompressed under its name
without ``.gz``, and is accepted when its *content* (decompressed, for a gzip file) has that MD5: a plain IDX
copy, or a ``.gz`` re-compressed by a packager, holds the same data under different bytes.

``<dest>/checksums.lock.json`` maps each file name to ``{"md5", "size", "mtime_ns"}`` (plus ``"path"`` for a
file read in place or under its plain name, ``"content_md5"`` where the content was verified): a registry
entry without a published hash has its hash recorded there on first download and verified on every later
run; a file whose size and mtime match its lock entry is trusted without re-hashing (a 19 GB archive is read
once, not on every run).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import urllib.parse
import urllib.request
import zlib
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
    return file_digests(path, chunk_size)[0]


def file_digests(path: str | os.PathLike, chunk_size: int = 1 << 20) -> tuple[str, str | None]:
    """``(MD5 of the bytes, MD5 of the decompressed content or None)`` of a file, in one read.

    The second digest is computed for gzip files only (``None`` for others, or for a gzip stream that is
    corrupt or truncated: such a file matches no content hash).
    """
    raw = hashlib.md5(usedforsecurity=False)
    content = hashlib.md5(usedforsecurity=False)
    inflate = None
    with open(path, "rb") as f:
        for i, chunk in enumerate(iter(lambda: f.read(chunk_size), b"")):
            raw.update(chunk)
            if i == 0 and chunk[:2] == b"\x1f\x8b":
                inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
            if inflate is not None:
                try:
                    content.update(inflate.decompress(chunk))
                except zlib.error:
                    inflate, content = None, None
    if inflate is None or not inflate.eof:
        return raw.hexdigest(), None
    return raw.hexdigest(), content.hexdigest()


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
    """Make every file of ``files`` present and verified; return ``{name: path}``.

    The path is in ``dest``, or on a local mirror (read in place), and may be the plain (uncompressed) variant
    of a file with a ``content_md5``.

    Args:
        mirrors: tried in order before the official URL; http(s)/ftp URL, ``file://`` URL or directory.
        use_official: also try each file's official URL after the mirrors.
        progress: show pooch's progress bar for remote downloads.
        retries: extra attempts per remote source after a failed download (pooch's ``retry_if_failed``).

    Raises:
        DataError: no source delivered a file whose MD5 matches (the message lists every attempt, with the
            expected and actual hash for checksum failures, including a file already present in ``dest``).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    lock_path = dest / LOCK_NAME
    lock = _read_lock(lock_path)
    paths = {}
    for remote in files:
        entry = lock.get(remote.name)
        expected = remote.md5 or (entry or {}).get("md5")
        check = _Check(remote, expected)
        failures: list[str] = []
        found = None
        for candidate in _local_candidates(remote, dest, entry):
            digests = _verified(candidate, check, entry, failures)
            if digests is not None:
                found = candidate, digests
                break
        if found is None:
            found = _fetch_one(remote, check, mirrors, dest, use_official=use_official, progress=progress,
                               retries=retries, failures=failures)
        path, (raw_md5, content_md5) = found
        stat = path.stat()
        lock[remote.name] = {"md5": raw_md5, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                             **({"content_md5": content_md5} if content_md5 else {}),
                             **({"path": str(path)} if path != dest / remote.name else {})}
        write_json(lock_path, lock)
        paths[remote.name] = path
    return paths


def locked_md5(path: str | os.PathLike, lock_dir: str | os.PathLike) -> str | None:
    """The MD5 that ``lock_dir``'s lock file records for ``path`` (in ``lock_dir``, or read in place from a
    mirror), if the file is still unchanged (same size and modification time); else None."""
    path = Path(path)
    entry = _read_lock(Path(lock_dir) / LOCK_NAME).get(path.name)
    if not entry or Path(entry.get("path") or Path(lock_dir) / path.name) != path:
        return None
    stat = path.stat()
    if entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
        return entry.get("md5")
    return None


class _Check:
    """What a file must hash to: the published (or recorded) MD5 of its bytes, or the MD5 of its content."""

    def __init__(self, remote: RemoteFile, expected: str | None) -> None:
        self.expected, self.content = expected, remote.content_md5

    def accepts(self, raw_md5: str, content_md5: str | None) -> bool:
        if self.expected is None and self.content is None:
            return True
        if raw_md5 == self.expected:
            return True
        return self.content is not None and self.content in (raw_md5, content_md5)

    def describe(self) -> str:
        wanted = [self.expected] if self.expected else []
        wanted += [f"{self.content} (uncompressed content)"] if self.content else []
        return " or ".join(wanted)


def _plain_name(remote: RemoteFile) -> str | None:
    return remote.name.removesuffix(".gz") if remote.content_md5 and remote.name.endswith(".gz") else None


def _names(remote: RemoteFile) -> list[str]:
    plain = _plain_name(remote)
    return [remote.name] + ([plain] if plain else [])


def _local_candidates(remote: RemoteFile, dest: Path, entry: dict | None) -> list[Path]:
    """Where a verified copy may already be: the lock entry's path (in place), then ``dest``."""
    candidates = [Path(entry["path"])] if entry and entry.get("path") else []
    return candidates + [dest / name for name in _names(remote)]


def _verified(path: Path, check: _Check, entry: dict | None, failures: list[str]
              ) -> tuple[str, str | None] | None:
    """The file's ``(md5, content md5)`` if it exists and passes ``check`` (trusting an unchanged lock entry);
    a checksum failure is appended to ``failures``."""
    if not path.is_file():
        return None
    stat = path.stat()
    if (entry is not None and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns
            and Path(entry.get("path") or path) == path):
        digests = entry["md5"], entry.get("content_md5")
    else:
        digests = file_digests(path)
    if check.accepts(*digests):
        return digests
    failures.append(f"{path}: checksum mismatch: expected {check.describe()}, actual {digests[0]}"
                    + (f" (content {digests[1]})" if digests[1] else ""))
    log.warning("%s", failures[-1])
    return None
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


def _mirror_location(mirror: str, name: str) -> str:
    """``<mirror>/<name>``: a URL for remote mirrors, a local path for ``file://`` URLs and directories."""
    scheme = urllib.parse.urlparse(mirror).scheme
    if scheme in _REMOTE_SCHEMES:
        return mirror.rstrip("/") + "/" + urllib.parse.quote(name)
    if scheme == "file":
        return str(Path(urllib.request.url2pathname(urllib.parse.urlparse(mirror).path)) / name)
    return str(Path(mirror).expanduser() / name)


def _fetch_one(remote: RemoteFile, check: _Check, mirrors: Sequence[str], dest: Path, *, use_official: bool,
               progress: bool, retries: int, failures: list[str]) -> tuple[Path, tuple[str, str | None]]:
    """Try every source in order until one gives a file that passes ``check``: a local mirror's file is
    used in place, a remote one is downloaded into ``dest/.partial`` and renamed into ``dest``."""
    sources = [(_mirror_location(m, name), name) for m in mirrors for name in _names(remote)]
    sources += [(remote.url, remote.name)] if use_official else []
    if not sources:
        state = failures[0] if failures else f"not present in {dest}"
        raise DataError(f"{remote.name}: {state}, and no source to fetch it from (no mirrors given and "
                        "use_official is off)")
    staging = dest / ".partial"
    for source, name in sources:
        if urllib.parse.urlparse(source).scheme not in _REMOTE_SCHEMES:
            path = Path(source)
            if not path.is_file():
                failures.append(f"{source}: no such file")
                continue
            digests = _verified(path, check, None, failures)
            if digests is not None:
                return path, digests
            continue
        staging.mkdir(exist_ok=True)
        partial = staging / name
        partial.unlink(missing_ok=True)
        try:
            _download(source, partial, progress=progress, retries=retries)
        except OSError as e:
            failures.append(f"{source}: {type(e).__name__}: {e}")
            partial.unlink(missing_ok=True)
            continue
        digests = _verified(partial, check, None, failures)
        if digests is None:
            partial.unlink()
            failures[-1] += " (partial file deleted)"
            continue
        os.replace(partial, dest / name)
        return dest / name, digests
    raise DataError(f"could not fetch {remote.name} into {dest}; tried:\n  " + "\n  ".join(failures))


def _download(source: str, partial: Path, *, progress: bool, retries: int) -> None:
    import pooch
    pooch.get_logger().setLevel(logging.WARNING)
    fetcher = pooch.create(path=partial.parent, base_url="", registry={partial.name: None},
                           urls={partial.name: source}, retry_if_failed=retries)
    fetcher.fetch(partial.name, downloader=pooch.HTTPDownloader(progressbar=progress, timeout=60)
                  if source.startswith("http") else None)
