"""Lab VM selection and command line (no VM is booted here; see test_lab.py for that)."""

import pytest

from callpath.probes import labvm


def fake_boot(tmp_path, releases, with_headers):
    boot, mods = tmp_path / "boot", tmp_path / "modules"
    boot.mkdir()
    for r in releases:
        (boot / f"vmlinuz-{r}").write_bytes(b"")
        if r in with_headers:
            (mods / r / "build").mkdir(parents=True)
    return str(boot), str(mods)


def test_list_sorted_newest_first(tmp_path, monkeypatch):
    boot, mods = fake_boot(tmp_path, ["6.1.0-9-amd64", "6.12.1-amd64", "6.1.0-56-amd64"], {"6.1.0-56-amd64"})
    ks = labvm.list_lab_kernels(boot, mods)
    assert [k.release for k in ks] == ["6.12.1-amd64", "6.1.0-56-amd64", "6.1.0-9-amd64"]
    monkeypatch.setattr(labvm, "list_lab_kernels", lambda: ks)
    # the default is the newest kernel that has headers (bcc needs them)
    assert labvm.choose_kernel().release == "6.1.0-56-amd64"
    with pytest.raises(labvm.LabError, match="no headers"):
        labvm.choose_kernel("6.12.1-amd64")
    with pytest.raises(labvm.LabError, match="not installed"):
        labvm.choose_kernel("5.10.0-1-amd64")


def test_no_kernel_at_all(monkeypatch):
    monkeypatch.setattr(labvm, "list_lab_kernels", lambda: [])
    with pytest.raises(labvm.LabError, match="make setup"):
        labvm.choose_kernel()


def test_vng_command(tmp_path, monkeypatch):
    monkeypatch.setattr(labvm, "find_vng", lambda: "/x/vng")
    k = labvm.LabKernel("6.1.0-56-amd64", tmp_path / "vmlinuz", True)
    cmd = labvm.vng_command(k, ["python", "-m", "callpath", "record", "--out", "/o/t.parquet"], [tmp_path])
    assert cmd[:3] == ["/x/vng", "--run", str(tmp_path / "vmlinuz")]
    assert "--disable-kvm" in cmd and cmd[cmd.index("--rwdir") + 1] == str(tmp_path)
    assert cmd[-2] == "--" and cmd[-1] == "python -m callpath record --out /o/t.parquet"
