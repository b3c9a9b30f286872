"""Safe extraction of zip and tar archives.

Every member is checked before anything is written: absolute paths, ``..`` components, device files, and
symlinks or hardlinks that point outside the target are refused with a :class:`DataError` naming the archive
and the member. The archive is extracted into a temporary folder beside the target and renamed into place only
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


def _check_link(archive: Path, member_path: str, link: str, kind: str) -> None:
    """Refuse a link whose destination (relative to the member's folder, or absolute) leaves the target."""
    base = posixpath.dirname(member_path) if kind == "symlink" else ""
    dest = posixpath.normpath(posixpath.join(base, link))
    if link.startswith("/") or dest == ".." or dest.startswith("../"):
        raise DataError(f"archive {archive}: {kind} {member_path!r} -> {link!r} points outside the "
                        "extraction folder; refusing to extract")


def _extract_zip(archive: Path, tmp: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                name = _check_name(archive, info.filename)
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    _check_link(archive, name, zf.read(info).decode("utf-8", "replace"), "symlink")
            for info in zf.infolist():
                zf.extract(info, tmp)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as e:
        raise DataError(f"archive {archive} is corrupt or truncated: {e}") from e


def _extract_tar(archive: Path, tmp: Path) -> None:
    try:
        with tarfile.open(archive) as tf:
            members = tf.getmembers()  # reads the whole index: a truncated archive fails here
            for m in members:
                name = _check_name(archive, m.name)
                if m.issym():
                    _check_link(archive, name, m.linkname, "symlink")
                elif m.islnk():
                    _check_link(archive, name, _check_name(archive, m.linkname), "hardlink")
                elif not (m.isfile() or m.isdir()):
                    raise DataError(f"archive {archive}: member {m.name!r} is a device or fifo; refusing "
                                    "to extract")
            tf.extractall(tmp, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"archive {archive} is corrupt, truncated or unsafe: {e}") from e
