"""When the agent reports an instance's CPU and RAM use again: only when it moved past its noise."""

from __future__ import annotations

from aos_operator.agent.loop import usage_moved

REPORTED = {"phase": "Running", "restarts": 0, "cpuMillicores": 200, "ramBytes": 64 << 20}


def test_small_moves_of_cpu_and_ram_are_not_reported_again() -> None:
    assert not usage_moved(REPORTED, dict(REPORTED))
    assert not usage_moved(REPORTED, {**REPORTED, "cpuMillicores": 215})  # 15 mc, 7 %
    assert not usage_moved(REPORTED, {**REPORTED, "ramBytes": (64 << 20) + (4 << 20)})  # 4 MiB, 6 %
    assert not usage_moved({**REPORTED, "cpuMillicores": 3}, {**REPORTED, "cpuMillicores": 9})  # 200 %, but 6 mc


def test_a_move_past_both_floors_is_reported() -> None:
    assert usage_moved(REPORTED, {**REPORTED, "cpuMillicores": 240})  # 40 mc, 17 %
    assert usage_moved(REPORTED, {**REPORTED, "ramBytes": 80 << 20})  # 16 MiB, 20 %
    assert usage_moved({**REPORTED, "ramBytes": None}, REPORTED)  # first known


def test_any_other_change_is_reported() -> None:
    assert usage_moved(REPORTED, {**REPORTED, "restarts": 1})
    assert usage_moved(REPORTED, {**REPORTED, "phase": "Failed", "exitCode": 1})
