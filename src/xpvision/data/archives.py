"""Safe extraction of zip and tar archives.

Every member is checked before anything is written: absolute paths, ``..`` components, device files, and
symlinks or hardlinks that point outside the target are refused with a :class:`DataError` naming the archive
and the member. Paths are checked the way the file system will resolve them: every symlink met so far in the
archive is followed (as ``os.path.realpath`` would follow it once written), so a chain of links — ``a -> .``,
``b -> a/..``, then a member ``b/x`` — cannot lead outside the target. This is done by the project itself,
not left to ``tarfile``'s extraction filters, which Python 3.10 before 3.10.12 lacks.

The archive is extracted into a temporary folder beside the target and renamed into place only
when the whole archive has been read without error, so a corrupt or truncated archive leaves nothing behind.
"""

from __future__ import annotations

import os
import posixpath
import tarfile
import zipfile
from pathlib import Path

from xpvision.data.folders import atomic_dir
from xpvision.errors import DataError


def extract_archive(archive: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Extract a ``.zip`` or ``.tar`` (optionally gz/bz2/xz) archive into the folder ``target`` atomically.

    An existing ``target`` is replaced only after the new extraction succeeded. Returns ``target``.
    """
    archive, target = Path(archive), Path(target)
    if not archive.is_file():
        raise DataError(f"archive {archive} does not exist")
    with atomic_dir(target) as tmp:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, tmp)
        elif tarfile.is_tarfile(archive):
            _extract_tar(archive, tmp)
        else:
            raise DataError(f"archive {archive}: not a zip or tar file (or truncated before its first "
                            "member)")
    return target


def _check_name(archive: Path, name: str) -> str:
    """The member's normalised relative POSIX path; DataError for absolute paths and ``..`` escapes."""
    unixy = name.replace("\\", "/")
    if unixy.startswith("/") or (len(unixy) > 1 and unixy[1] == ":"):
        raise DataError(f"archive {archive}: member {name!r} has an absolute path; refusing to extract")
    norm = posixpath.normpath(unixy)
    if norm == ".." or norm.startswith("../") or ".." in unixy.split("/"):
        raise DataError(f"archive {archive}: member {name!r} contains '..' (path traversal); refusing to "
                        "extract")
    return norm


_MAX_LINK_HOPS = 40  # as the Linux kernel's limit on symlinks followed in one path lookup


def _resolve(path: str, links: dict[str, str]) -> str | None:
    """The real path (relative to the target) that ``path`` reaches once ``links`` (member -> target, as
    extracted so far) are written; ``None`` if it leaves the target, is absolute, or loops."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if not resolved:
                return None
            resolved.pop()
            continue
        candidate = "/".join([*resolved, part])
        if candidate in links:
            hops += 1
            target = links[candidate]
            if hops > _MAX_LINK_HOPS or target.startswith("/"):
                return None
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        resolved.append(part)
    return "/".join(resolved)


def _check_member(archive: Path, name: str, link: str | None, kind: str, links: dict[str, str]) -> None:
    """Refuse a member whose folder, or (for links) whose destination, resolves outside the target."""
    parent = posixpath.dirname(name)
    if _resolve(parent, links) is None:
        raise DataError(f"archive {archive}: member {name!r} is written through links that lead outside the "
                        "extraction folder; refusing to extract")
    if link is None:
        return
    base = parent if kind == "symlink" else ""
    if link.startswith("/") or _resolve(posixpath.join(base, link), links) is None:
        raise DataError(f"archive {archive}: {kind} {name!r} -> {link!r} points outside the "
                        "extraction folder; refusing to extract")
    if kind == "symlink":
        links[name] = posixpath.join(parent, link) if parent else link


def _extract_zip(archive: Path, tmp: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            links: dict[str, str] = {}
            for info in zf.infolist():
                name = _check_name(archive, info.filename)
                is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
                target = zf.read(info).decode("utf-8", "replace") if is_link else None
                _check_member(archive, name, target, "symlink", links)
            for info in zf.infolist():
                zf.extract(info, tmp)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as e:
        raise DataError(f"archive {archive} is corrupt or truncated: {e}") from e


def _extract_tar(archive: Path, tmp: Path) -> None:
    try:
        with tarfile.open(archive) as tf:
            members = tf.getmembers()  # reads the whole index: a truncated archive fails here
            links: dict[str, str] = {}
            for m in members:
                name = _check_name(archive, m.name)
                if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
                    raise DataError(f"archive {archive}: member {m.name!r} is a device or fifo; refusing "
                                    "to extract")
                link = m.linkname if m.issym() else _check_name(archive, m.linkname) if m.islnk() else None
                _check_member(archive, name, link, "symlink" if m.issym() else "hardlink", links)
            # the checks above are complete on every Python; the "data" filter, where it exists, adds
            # tarfile's own (permissions, ownership)
            extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tf.extractall(tmp, members=members, **extra)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"archive {archive} is corrupt, truncated or unsafe: {e}") from e
