"""The module index: function symbols of real ELF objects (built here with cc), compressed
or not, cached per release; which module holds a documented function."""

import gzip
import lzma
import os
import shutil
import subprocess

import pytest

from callpath.analysis.outline import parse_outline
from callpath.probes import modindex
from callpath.probes.kernel import KernelSymbols
from callpath.probes.modindex import ModuleIndex, home_modules, modules_to_load

SOURCE = """
int shared_helper(int x) { return x + 1; }
static int __attribute__((noinline)) local_fn(int x) { return x * 3; }
int %(prefix)s_xmit(int x) { return local_fn(x) + shared_helper(x); }
int __attribute__((section(".init.text"))) %(prefix)s_init(void) { return 0; }
int %(prefix)s_data = 4;
"""

needs_cc = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")


def _compile(tmp_path, prefix):
    src = tmp_path / f"{prefix}.c"
    src.write_text(SOURCE % {"prefix": prefix})
    obj = tmp_path / f"{prefix}.o"
    subprocess.run(["cc", "-O1", "-c", str(src), "-o", str(obj)], check=True)
    return obj.read_bytes()


@pytest.fixture
def tree(tmp_path):
    """/lib/modules/REL with one plain, one xz, one gzip (and, when available, one zstd) module."""
    if shutil.which("cc") is None:
        pytest.skip("no C compiler")
    root = tmp_path / "modules"
    d = root / "9.9.9-test" / "kernel" / "drivers" / "net"
    d.mkdir(parents=True)
    (d / "plainmod.ko").write_bytes(_compile(tmp_path, "plain"))
    (d / "xz-mod.ko.xz").write_bytes(lzma.compress(_compile(tmp_path, "xzm"), format=lzma.FORMAT_XZ))
    (d / "gzmod.ko.gz").write_bytes(gzip.compress(_compile(tmp_path, "gzm")))
    try:
        import zstandard

        (d / "zstmod.ko.zst").write_bytes(zstandard.ZstdCompressor().compress(_compile(tmp_path, "zst")))
    except ImportError:
        pass
    (d / "broken.ko").write_bytes(b"not an ELF file")
    rel = root / "9.9.9-test"
    (rel / "modules.builtin").write_text("kernel/net/bridge/bridge.ko\nkernel/drivers/net/dummy-ish.ko\n")
    (rel / "modules.dep").write_text("kernel/drivers/net/plainmod.ko:\n")
    return root


def test_function_symbols_of_a_real_object(tree):
    funcs, init = modindex.function_symbols(tree / "9.9.9-test/kernel/drivers/net/plainmod.ko")
    assert {"plain_xmit", "local_fn", "shared_helper", "plain_init"} <= set(funcs)
    assert "plain_data" not in funcs  # an object, not a function
    assert init == ["plain_init"]


def test_build_index_reads_every_compression(tree):
    idx = modindex.build_index("9.9.9-test", root=str(tree))
    assert idx.modules_of("plain_xmit") == ["plainmod"]
    assert idx.modules_of("xzm_xmit") == ["xz_mod"]  # dashes become underscores, as in /sys/module
    assert idx.modules_of("gzm_xmit") == ["gzmod"]
    if "zstmod" in idx.modules:
        assert idx.modules_of("zst_xmit") == ["zstmod"]
    # a static function defined in every module: all of them hold a copy
    assert set(idx.modules_of("local_fn")) == set(idx.modules)
    assert idx.is_init("gzmod", "gzm_init") and not idx.is_init("gzmod", "gzm_xmit")
    assert idx.builtin == {"bridge", "dummy_ish"}
    assert list(idx.unreadable) == ["kernel/drivers/net/broken.ko"]
    assert idx.modules_of("no_such_function") == []


def test_cache_is_used_and_invalidated_by_modules_dep(tree, tmp_path):
    cache = tmp_path / "cache"
    lines = []
    first = modindex.load_index("9.9.9-test", root=str(tree), cache_dir=cache, progress=lines.append)
    assert (cache / "modindex-9.9.9-test.json").exists() and any("reading" in line for line in lines)
    lines.clear()
    again = modindex.load_index("9.9.9-test", root=str(tree), cache_dir=cache, progress=lines.append)
    assert lines == [] and again.to_dict() == first.to_dict()  # from the cache, nothing read
    # depmod ran (modules.dep changed): a new module file is seen
    d = tree / "9.9.9-test/kernel/drivers/net"
    shutil.copyfile(d / "plainmod.ko", d / "newmod.ko")
    dep = tree / "9.9.9-test/modules.dep"
    st = dep.stat()
    os.utime(dep, (st.st_atime, st.st_mtime + 10))
    rebuilt = modindex.load_index("9.9.9-test", root=str(tree), cache_dir=cache, progress=lines.append)
    assert "newmod" in rebuilt.modules and any("reading" in line for line in lines)


def test_missing_release_raises(tmp_path):
    with pytest.raises(modindex.ModuleIndexError, match="no modules installed"):
        modindex.build_index("0.0-none", root=str(tmp_path))
    assert modindex.index_or_none("0.0-none") is None  # says so, never raises


def test_module_name():
    assert modindex.module_name("kernel/net/bridge/bridge.ko.xz") == "bridge"
    assert modindex.module_name("nf-nat.ko") == "nf_nat"
    assert modindex.module_name("a/b/x.ko.zst") == "x"


def _index():
    idx = ModuleIndex(release="t")
    idx.add("bridge", "bridge.ko", ["br_handle_frame", "br_forward", "dev_queue_xmit_copy", "br_helper.isra.0"])
    idx.add("openvswitch", "openvswitch.ko", ["dev_queue_xmit", "ovs_vport_send"])
    idx.add("act_mirred", "act_mirred.ko", ["dev_queue_xmit"])
    idx.add("macvtap", "macvtap.ko", ["macvtap_init", "macvtap_newlink"], init=["macvtap_init"])
    return idx


def test_home_modules_uses_document_context_for_static_copies():
    idx = _index()
    fns = ["br_handle_frame", "br_forward", "dev_queue_xmit", "netif_rx", "br_helper"]
    homes = home_modules(fns, idx, {"netif_rx": "vmlinux"})
    assert homes["br_handle_frame"] == ["bridge"] and homes["br_helper"] == ["bridge"]  # a clone's base
    # copies of a header inline in two modules, neither on the bridge path: not attributed to one
    assert sorted(homes["dev_queue_xmit"]) == ["act_mirred", "openvswitch"]
    assert "netif_rx" not in homes  # kallsyms already knows it
    # a document that also names an openvswitch function: that copy is the one meant
    assert home_modules(["ovs_vport_send", "dev_queue_xmit"], idx, {})["dev_queue_xmit"] == ["openvswitch"]
    assert home_modules(fns, None, {}) == {}


def test_modules_to_load_from_the_index_not_a_list():
    idx = _index()
    spec = parse_outline("1. br_handle_frame(skb)\n1.1 br_forward(skb)\n1.2 dev_queue_xmit(skb)\n"
                         "2. veth_xmit(skb)\n", "b.txt")
    assert modules_to_load([spec], idx, {"veth_xmit": "veth"}) == ["bridge"]
    # already loaded: its functions are in kallsyms, nothing to load
    assert modules_to_load([spec], idx, {"br_handle_frame": "bridge", "br_forward": "bridge"}) == []


def test_loaded_modules_reads_proc_modules_format(tmp_path):
    f = tmp_path / "modules"
    f.write_text("bridge 311296 0 - Live 0x0000000000000000\nstp 16384 1 bridge, Live 0x0\n"
                 "veth 36864 0 - Loading 0x0\n")
    assert modindex.loaded_modules(str(f)) == {"bridge", "stp"}
    assert modindex.loaded_modules(str(tmp_path / "missing")) == set()


def test_plan_with_index_never_absent_for_a_module_function():
    from callpath.probes.plan import build_plan

    idx = _index()
    spec = parse_outline("1. br_handle_frame(skb)\n1.1 br_forward(skb)\n1.2 dev_queue_xmit(skb)\n"
                         "2. macvtap_init()\n", "b.txt")
    syms = KernelSymbols(release="t", text={"__dev_queue_xmit": "vmlinux"}, traceable={"__dev_queue_xmit"},
                         traceable_known=True)
    plan = build_plan([spec], syms, index=idx, late_attach=True)
    br = plan.functions["br_forward"]
    assert br.status == "module-not-loaded" and br.module == "bridge" and br.func_id is not None
    assert "bridge" in br.reason and "--load-modules" in br.reason and "modprobe bridge" in br.reason
    # an inline header copy elsewhere stays absent, naming the copies
    dq = plan.functions["dev_queue_xmit"]
    assert dq.status == "absent" and "openvswitch" in dq.reason
    # module init code of a module not loaded: never gets a late slot (it runs while loading)
    init = plan.functions["macvtap_init"]
    assert init.status == "module-not-loaded" and init.boot_only and init.func_id is None
    # without late attach, no slot for a module not loaded
    plan2 = build_plan([spec], syms, index=idx)
    assert plan2.functions["br_forward"].func_id is None


def test_index_handed_to_a_lab_guest_is_used_without_a_module_tree(tmp_path, monkeypatch):
    """The guest reads the index the host wrote (no rebuild under TCG), only for its release."""
    from callpath.probes import modindex

    idx = modindex.ModuleIndex(release="9.9.9-test", builtin={"veth"})
    line = modindex.write_for_guest(idx, tmp_path / "mi.json")
    assert line.startswith(f"export {modindex.GUEST_INDEX_ENV}=")
    monkeypatch.setenv(modindex.GUEST_INDEX_ENV, str(tmp_path / "mi.json"))
    got = modindex.load_index("9.9.9-test", root=str(tmp_path / "no-such-root"), cache_dir=tmp_path)
    assert got.release == "9.9.9-test" and got.builtin == {"veth"}
    with pytest.raises(modindex.ModuleIndexError):  # another release: not handed over
        modindex.load_index("9.9.8-other", root=str(tmp_path / "no-such-root"), cache_dir=tmp_path)
