"""Safe extraction: traversal, absolute paths and outward links refused; corrupt archives leave nothing."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile

import pytest

from xpvision.data.archives import extract_archive
from xpvision.errors import DataError


def _tar(path, members):
    """Write a tar of ``members``: (name, bytes) files or (name, ('symlink'|'hardlink', target)) links."""
    with tarfile.open(path, "w") as tf:
        for name, content in members:
            info = tarfile.TarInfo(name)
            if isinstance(content, tuple):
                info.type = tarfile.SYMTYPE if content[0] == "symlink" else tarfile.LNKTYPE
                info.linkname = content[1]
                tf.addfile(info)
            else:
                info.size = len(content)
                tf.addfile(info, io.BytesIO(content))


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, content in members:
            if isinstance(content, tuple):  # a symlink entry, as `zip --symlinks` stores it
                info = zipfile.ZipInfo(name)
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                zf.writestr(info, content[1])
            else:
                zf.writestr(name, content)


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_extracts_a_good_archive_and_replaces_the_old_target(tmp_path, kind):
    archive = tmp_path / f"a.{kind}"
    members = [("VOCdevkit/VOC2007/a.txt", b"A"), ("VOCdevkit/b.txt", b"BB")]
    (_tar if kind == "tar" else _zip)(archive, members)
    target = tmp_path / "out"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    extract_archive(archive, target)
    assert (target / "VOCdevkit/VOC2007/a.txt").read_bytes() == b"A"
    assert (target / "VOCdevkit/b.txt").read_bytes() == b"BB"
    assert not (target / "stale.txt").exists()
    assert _leftovers(tmp_path) == [archive.name, "out"]


BAD_MEMBERS = {
    "dotdot": [("ok.txt", b"x"), ("../evil.txt", b"evil")],
    "nested-dotdot": [("a/../../evil.txt", b"evil")],
    "absolute": [("/tmp/evil.txt", b"evil")],
    "symlink-out": [("link", ("symlink", "../../etc/passwd"))],
    "symlink-absolute": [("link", ("symlink", "/etc/passwd"))],
    # chains: the last link's text stays inside, but it leaves once the earlier links are followed
    "symlink-chain": [("a", ("symlink", ".")), ("b", ("symlink", "a/.."))],
    "symlink-chain-link": [("d/up", ("symlink", "..")), ("d/x", ("symlink", "up/../.."))],
    "link-in-linked-folder": [("a", ("symlink", ".")), ("a/b", ("symlink", ".."))],
}


@pytest.mark.parametrize("kind", ["tar", "zip"])
@pytest.mark.parametrize("case", sorted(BAD_MEMBERS))
def test_unsafe_members_are_refused_and_nothing_is_written(tmp_path, kind, case):
    archive = tmp_path / f"bad.{kind}"
    (_tar if kind == "tar" else _zip)(archive, BAD_MEMBERS[case])
    with pytest.raises(DataError) as info:
        extract_archive(archive, tmp_path / "out")
    bad_name = BAD_MEMBERS[case][-1][0]
    assert str(archive) in str(info.value) and bad_name in str(info.value)
    assert _leftovers(tmp_path) == [archive.name]


def test_hardlink_out_of_tar_is_refused(tmp_path):
    archive = tmp_path / "bad.tar"
    _tar(archive, [("a.txt", b"x"), ("hard", ("hardlink", "../outside.txt"))])
    with pytest.raises(DataError, match="hard"):
        extract_archive(archive, tmp_path / "out")
    assert _leftovers(tmp_path) == [archive.name]


def test_symlink_inside_the_target_is_allowed(tmp_path):
    archive = tmp_path / "ok.tar"
    _tar(archive, [("dir/a.txt", b"x"), ("dir/link", ("symlink", "a.txt"))])
    extract_archive(archive, tmp_path / "out")
    assert (tmp_path / "out/dir/link").read_bytes() == b"x"


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_truncated_archive_leaves_nothing(tmp_path, kind):
    archive = tmp_path / f"t.{kind}"
    payload = bytes(range(256)) * 200
    (_tar if kind == "tar" else _zip)(archive, [("first.bin", payload), ("second.bin", payload)])
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(DataError, match=str(archive)):
        extract_archive(archive, tmp_path / "out")
    assert _leftovers(tmp_path) == [archive.name]


def test_corrupt_zip_member_is_detected(tmp_path):
    archive = tmp_path / "c.zip"
    _zip(archive, [("a.bin", b"A" * 1000)])
    data = bytearray(archive.read_bytes())
    data[data.index(b"A" * 100) + 10] ^= 0xFF  # flip a byte of the stored data: CRC mismatch
    archive.write_bytes(bytes(data))
    with pytest.raises(DataError, match="corrupt"):
        extract_archive(archive, tmp_path / "out")
    assert _leftovers(tmp_path) == [archive.name]


def test_not_an_archive(tmp_path):
    archive = tmp_path / "x.tar"
    archive.write_bytes(b"hello, not an archive")
    with pytest.raises(DataError, match="not a zip or tar"):
        extract_archive(archive, tmp_path / "out")


def test_member_written_through_a_linked_folder_stays_inside(tmp_path):
    archive = tmp_path / "ok.tar"
    _tar(archive, [("real/x.txt", b"x"), ("alias", ("symlink", "real")), ("alias/y.txt", b"y")])
    extract_archive(archive, tmp_path / "out")
    assert (tmp_path / "out/real/y.txt").read_bytes() == b"y"
