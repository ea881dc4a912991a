"""Finding and fetching DWARF (probes/debuginfo.py): search order, stripped files, and the
extraction of only the wanted files from a Debian -dbg package (a real, tiny .deb)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from callpath.probes import debuginfo as di

FIX = Path(__file__).parent / "fixtures" / "dwarf"
REL = "9.9.9-test-amd64"


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setattr(di, "cache_root", lambda release: root / release)
    return root / REL


def test_has_dwarf_tells_debug_files_from_stripped_ones(tmp_path):
    assert di.has_dwarf(FIX / "inline2.o")
    stripped = tmp_path / "s.o"
    shutil.copy(FIX / "inline2.o", stripped)
    subprocess.run(["strip", "--strip-debug", str(stripped)], check=True)
    assert not di.has_dwarf(stripped)
    assert not di.has_dwarf(tmp_path / "missing")


def test_debug_relpath_drops_compression_suffix():
    assert di.debug_relpath("kernel/drivers/net/macvlan.ko.xz") == "kernel/drivers/net/macvlan.ko"
    assert di.debug_relpath("kernel/net/bridge/bridge.ko") == "kernel/net/bridge/bridge.ko"


def test_user_dir_searched_first_in_every_layout(tmp_path, cache):
    flat, tree = tmp_path / "flat", tmp_path / "tree"
    flat.mkdir()
    shutil.copy(FIX / "inline2.o", flat / "macvlan.ko")
    (tree / "usr/lib/debug/lib/modules" / REL / "kernel/drivers/net").mkdir(parents=True)
    shutil.copy(FIX / "inline2.o", tree / "usr/lib/debug/lib/modules" / REL / "kernel/drivers/net/veth.ko")
    mods = {"macvlan": "kernel/drivers/net/macvlan.ko.xz", "veth": "kernel/drivers/net/veth.ko",
            "nothere": "kernel/drivers/net/nothere.ko"}
    got = di.find_debuginfo(REL, mods, user_dirs=[str(flat), str(tree)], moddir=str(tmp_path / "nomods"))
    assert got.modules == {"macvlan": str(flat / "macvlan.ko"),
                           "veth": str(tree / "usr/lib/debug/lib/modules" / REL / "kernel/drivers/net/veth.ko")}
    assert got.sources == {"macvlan": "user", "veth": "user"} and got.missing == ["nothere"]


def test_dbg_package_name_refuses_odd_releases():
    assert di.dbg_package("6.1.0-56-amd64") == "linux-image-6.1.0-56-amd64-dbg"
    with pytest.raises(di.DebugInfoError):
        di.dbg_package("6.1; rm -rf /")


@pytest.mark.skipif(not shutil.which("dpkg-deb"), reason="needs dpkg-deb (Debian)")
def test_fetch_extracts_only_the_wanted_files_from_the_package(tmp_path, cache):
    # a tiny package laid out like linux-image-RELEASE-dbg
    pkg = tmp_path / "pkg"
    mdir = pkg / "usr/lib/debug/lib/modules" / REL / "kernel/drivers/net"
    mdir.mkdir(parents=True)
    for name in ("macvlan.ko", "veth.ko", "bridge.ko"):
        shutil.copy(FIX / "inline2.o", mdir / name)
    (pkg / "DEBIAN").mkdir()
    (pkg / "DEBIAN/control").write_text(f"Package: linux-image-{REL}-dbg\nVersion: 1\nArchitecture: amd64\n"
                                        "Maintainer: t <t@example.org>\nDescription: test\n")
    cache.mkdir(parents=True)
    deb = cache / f"linux-image-{REL}-dbg_1_amd64.deb"
    subprocess.run(["dpkg-deb", "--build", "-Zgzip", str(pkg), str(deb)], check=True, capture_output=True)
    lines = []
    got = di.fetch_debian(REL, {"macvlan": "kernel/drivers/net/macvlan.ko.xz", "veth": "kernel/drivers/net/veth.ko"},
                          progress=lines.append)
    base = cache / "usr/lib/debug/lib/modules" / REL / "kernel/drivers/net"
    assert sorted(Path(p).name for p in got) == ["macvlan.ko", "veth.ko"]
    assert (base / "macvlan.ko").is_file() and not (base / "bridge.ko").exists()
    assert not deb.exists()  # the package is removed once extracted
    found = di.find_debuginfo(REL, {"veth": "kernel/drivers/net/veth.ko"}, moddir=str(tmp_path))
    assert found.sources == {"veth": "cache"}
    # files already there: nothing to download or extract
    assert di.fetch_debian(REL, {"veth": "kernel/drivers/net/veth.ko"}) == []
