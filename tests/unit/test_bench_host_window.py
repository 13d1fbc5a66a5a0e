"""The benches say how much CPU time the hypervisor stole while they measured (bench/host_window.py)."""

import pytest

from bench.host_window import CpuTicks, HostWindow, parse_cpu_line, read_cpu_ticks, steal_share

# a real all-CPU line of a 2-vCPU Firecracker guest: user nice system idle iowait irq softirq steal guest guest_nice
LINE = "cpu  116976 37 25246 179402 1422 0 1371 21532 0 0"


def test_the_all_cpu_line_gives_every_state_once_and_the_steal_apart():
    ticks = parse_cpu_line(LINE)
    assert ticks == CpuTicks(total=116976 + 37 + 25246 + 179402 + 1422 + 0 + 1371 + 21532, steal=21532)


def test_guest_time_is_not_counted_twice():
    # guest time is already inside user time: a line with guest ticks has the same total
    assert parse_cpu_line(LINE.replace(" 0 0", " 500 7")).total == parse_cpu_line(LINE).total


@pytest.mark.parametrize("line", ["cpu0 1 2 3 4 5 6 7 8", "intr 1 2 3", "", "cpu 1 2 3"])
def test_a_line_that_is_not_the_all_cpu_line_is_refused(line):
    with pytest.raises(ValueError):
        parse_cpu_line(line)


def test_the_share_is_the_stolen_ticks_over_all_ticks_of_the_window():
    # the run of `replay --at` that took 1.59 s wall for 1.13 CPU-s: 96 of 335 ticks stolen
    before, after = CpuTicks(total=1000, steal=100), CpuTicks(total=1335, steal=196)
    assert steal_share(before, after) == pytest.approx(96 / 335)


def test_no_reading_or_no_tick_passed_gives_no_share_rather_than_zero():
    t = CpuTicks(total=1000, steal=100)
    assert steal_share(None, t) is None
    assert steal_share(t, None) is None
    assert steal_share(t, t) is None


def test_a_window_on_this_machine_says_its_load_and_the_share_stolen_once_a_tick_passed(tmp_path):
    assert read_cpu_ticks(str(tmp_path / "missing")) is None  # not Linux: no reading, never a made-up share
    window = HostWindow()
    if window.start is None:
        pytest.skip("no /proc/stat on this system: the window can only say 'steal n/a'")
    while read_cpu_ticks().total == window.start.total:  # work until the kernel counted a tick
        sum(range(10_000))
    text = window.describe()
    assert text.startswith("load ")
    share = window.steal_share()
    assert share is not None and 0 <= share <= 1
    assert text.endswith("%") and "steal n/a" not in text


def test_every_bench_line_says_a_share_the_same_way():
    from bench.host_window import steal_text

    assert (steal_text(0.123), steal_text(0.0), steal_text(None)) == ("steal 12%", "steal 0%", "steal n/a")
