"""ftrace text (function_graph, kprobe events) into the event model."""

from callpath.analysis.calltree import build_forest
from callpath.analysis.ftrace_text import parse_function_graph, parse_kprobe_events
from callpath.analysis.trace import events_from_rows

GRAPH = """\
# tracer: function_graph
#
# CPU  DURATION                  FUNCTION CALLS
# |     |   |                     |   |   |   |
 0)               |  net_dev_init() {
 0)               |    dev_proc_init() {
 0)               |      register_pernet_subsys() {
 0)   1.250 us    |        down_write();
 0) + 12.500 us   |      }
 0) + 20.000 us   |    }
 0)   0.500 us    |    netdev_kobject_init();
 0) ! 150.250 us  |  } /* net_dev_init */
 1)   2.000 us    |  }
"""


def test_function_graph_nesting_and_durations():
    rows, stats = parse_function_graph(GRAPH)
    assert stats["calls"] == 5 and stats["unmatched_closes"] == 1  # the stray "}" on CPU 1
    assert stats["functions"] == ["dev_proc_init", "down_write", "net_dev_init", "netdev_kobject_init", "register_pernet_subsys"]
    fr = build_forest(events_from_rows(rows, mechanism="function_graph")).frames.set_index("function")
    assert fr.loc["register_pernet_subsys", "duration_ns"] == 12500
    assert fr.loc["down_write", "duration_ns"] == 1250
    assert fr.loc["net_dev_init", "duration_ns"] == 150250
    assert fr.loc["dev_proc_init", "depth"] == 1 and fr.loc["down_write", "depth"] == 3
    assert (fr["mechanism"] == "function_graph").all()
    # siblings keep their order: dev_proc_init before netdev_kobject_init
    assert fr.loc["dev_proc_init", "start_ns"] < fr.loc["netdev_kobject_init", "start_ns"]


KPROBES = """\
# tracer: nop
        modprobe-231     [001] d....    41.123456: cp_p0: (macvtap_init+0x0/0x1000 [macvtap])
        modprobe-231     [001] d....    41.123500: cp_p1: (tap_create_cdev+0x0/0x130 [tap])
        modprobe-231     [001] d....    41.123900: cp_r1: (macvtap_init+0x2d/0x1000 [macvtap] <- tap_create_cdev) arg1=0x0
        modprobe-231     [001] d....    41.124000: cp_r0: (do_one_initcall+0x46/0x1f0 <- macvtap_init) arg1=0xfffffffffffffff4
"""


def test_kprobe_events_with_return_values():
    events = {"cp_p0": ("macvtap_init", 0), "cp_r0": ("macvtap_init", 1),
              "cp_p1": ("tap_create_cdev", 0), "cp_r1": ("tap_create_cdev", 1)}
    rows = parse_kprobe_events(KPROBES, events)
    assert [(r[-1], r[2]) for r in rows] == [("macvtap_init", 0), ("tap_create_cdev", 0), ("tap_create_cdev", 1), ("macvtap_init", 1)]
    assert rows[0][1] == 41_123_456_000 and rows[0][4] == 231 and rows[0][11] == "modprobe"
    assert rows[3][10] == -12  # -ENOMEM, sign restored
    fr = build_forest(events_from_rows(rows, mechanism="kprobe_events")).frames.set_index("function")
    assert fr.loc["tap_create_cdev", "parent"] == 0 and fr.loc["tap_create_cdev", "duration_ns"] == 400_000


def test_module_functions_keep_their_name_without_the_module_tag():
    """function_graph prints a module's function as ``name [module]()`` (Debian 6.1, bridge.ko)."""
    text = (" 0)               |  br_handle_frame [bridge]() {\n"
            " 0)   1.352 us    |    br_fdb_find_rcu [bridge]();\n"
            " 0) + 47.210 us   |  }\n")
    rows, stats = parse_function_graph(text)
    names = [r[-1] for r in rows]
    assert "br_handle_frame" in names and "br_fdb_find_rcu" in names
    assert stats["calls"] == 2
