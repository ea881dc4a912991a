"""Call-tree rebuild from entry/return events (synthetic; real-kernel fixture in test_fixture_trace.py)."""

from callpath.analysis.calltree import build_forest, render_tree

from synthetic import EventBuilder, c


def test_nesting_and_durations():
    b = EventBuilder()
    b.call("a", c("b", c("d")), c("c"))
    forest = build_forest(b.events())
    fr = forest.frames
    assert list(fr["function"]) == ["a", "b", "d", "c"]
    assert list(fr["parent"]) == [-1, 0, 1, 0]
    assert list(fr["depth"]) == [0, 1, 2, 1]
    assert fr["complete"].all()
    # each event is 100 ns after the previous: d spans entry->return = 100 ns
    assert fr.loc[2, "duration_ns"] == 100
    assert fr.loc[0, "duration_ns"] == 700
    assert forest.chain(2) == ["a", "b", "d"]
    assert render_tree(forest, 0)[2] == "    d  100 ns"


def test_threads_are_separate_stacks_even_interleaved():
    b = EventBuilder()
    b.entry("a", tid=1).entry("x", tid=2).entry("b", tid=1).ret("x", tid=2).ret("b", tid=1).ret("a", tid=1)
    fr = build_forest(b.events()).frames
    row_b = fr[fr["function"] == "b"].iloc[0]
    assert fr.loc[row_b["parent"], "function"] == "a"
    assert fr[fr["function"] == "x"].iloc[0]["parent"] == -1


def test_idle_task_keyed_per_cpu():
    b = EventBuilder()
    # tid 0 on two CPUs: swapper/0 and swapper/1 are different contexts
    b.entry("a", tid=0, cpu=0).entry("b", tid=0, cpu=1).ret("b", tid=0, cpu=1).ret("a", tid=0, cpu=0)
    fr = build_forest(b.events()).frames
    assert (fr["parent"] == -1).all()


def test_lost_return_and_orphan_return():
    b = EventBuilder()
    b.ret("z")                      # began before probes attached
    b.entry("a").entry("b").ret("a")  # b's return lost (kretprobe maxactive)
    forest = build_forest(b.events())
    fr = forest.frames
    assert forest.orphan_returns == 1 and forest.unterminated == 1
    assert bool(fr.loc[0, "complete"]) and not bool(fr.loc[1, "complete"])
    # the next call is a root again, not a child of the unterminated b
    b.entry("c").ret("c")
    assert build_forest(b.events()).frames.iloc[-1]["parent"] == -1


def test_retval_kept():
    b = EventBuilder()
    b.call("a", retval=-22)
    assert build_forest(b.events()).frames.loc[0, "retval"] == -22


def test_fentry_and_kprobe_events_of_one_thread_nest_together():
    """One ring buffer carries fentry and kprobe events (--probes auto picks per function):
    a kprobe callee inside a fentry caller is its child; function_graph stays a stream of its own."""
    b = EventBuilder()
    b.call("a", c("b"), c("g"))
    ev = b.events()
    ev["mechanism"] = ["fentry", "kprobe", "kprobe", "function_graph", "function_graph", "fentry"]
    fr = build_forest(ev).frames
    assert fr.loc[fr["function"] == "b", "parent"].item() == fr.index[fr["function"] == "a"][0]
    assert fr.loc[fr["function"] == "g", "parent"].item() == -1
