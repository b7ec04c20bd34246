"""The pure restart rules: intensity window, restart types, strategy groups, auto_shutdown (no processes)."""

from __future__ import annotations

import pytest

from openfang.supervisor.restart import (
    NORMAL,
    SHUTDOWN,
    ExitKind,
    RestartWindow,
    abnormal,
    auto_shutdown_due,
    children_to_restart,
    reverse_start_order,
    should_restart,
)
from openfang.supervisor.spec import AutoShutdown, Restart, Strategy


def test_restart_window_allows_intensity_restarts_within_period() -> None:
    """intensity=3: three restarts in the period are fine, the fourth exceeds it."""
    w = RestartWindow(3, 5)
    assert [w.add_restart(t) for t in (0.0, 1.0, 2.0, 3.0)] == [True, True, True, False]


def test_restart_window_forgets_restarts_older_than_period() -> None:
    """Restarts older than period fall out of the window (sliding, like OTP add_restart)."""
    w = RestartWindow(2, 5)
    assert w.add_restart(0.0) and w.add_restart(1.0)
    assert w.add_restart(6.5)  # 0.0 and 1.0 are now outside [1.5, 6.5]
    assert len(w) == 1


def test_restart_window_boundary_is_inside_the_period() -> None:
    """A restart exactly `period` seconds ago still counts (OTP keeps R >= Now - Period)."""
    w = RestartWindow(1, 5)
    assert w.add_restart(0.0)
    assert not w.add_restart(5.0)


def test_restart_window_intensity_zero_refuses_the_first_restart() -> None:
    """intensity=0: any restart terminates the supervisor."""
    assert not RestartWindow(0, 5).add_restart(0.0)


def test_restart_window_reset_keeps_counted_restarts() -> None:
    """New flags on reload keep the restarts already counted."""
    w = RestartWindow(5, 5)
    w.add_restart(0.0)
    w.add_restart(0.1)
    w.reset(2, 5)
    assert not w.add_restart(0.2)


@pytest.mark.parametrize(
    ("restart", "normal", "shutdown", "abnormal_"),
    [
        (Restart.PERMANENT, True, True, True),
        (Restart.TRANSIENT, False, False, True),
        (Restart.TEMPORARY, False, False, False),
    ],
)
def test_should_restart_matrix(restart: Restart, normal: bool, shutdown: bool, abnormal_: bool) -> None:
    """OTP restart types: permanent always, transient after abnormal exits only, temporary never."""
    assert should_restart(restart, NORMAL) is normal
    assert should_restart(restart, SHUTDOWN) is shutdown
    assert should_restart(restart, abnormal(code=1)) is abnormal_
    assert should_restart(restart, abnormal(signal=9)) is abnormal_


def test_children_to_restart_one_for_one_is_only_the_failed_child() -> None:
    """one_for_one (and simple_one_for_one): nothing to terminate, restart the failed child."""
    assert children_to_restart(Strategy.ONE_FOR_ONE, ["a", "b", "c"], "b") == ([], ["b"])
    assert children_to_restart(Strategy.SIMPLE_ONE_FOR_ONE, ["a", "b"], "a") == ([], ["a"])


def test_children_to_restart_one_for_all_terminates_others_in_reverse() -> None:
    """one_for_all: terminate all others in reverse start order, start all in order."""
    assert children_to_restart(Strategy.ONE_FOR_ALL, ["a", "b", "c", "d"], "b") == (
        ["d", "c", "a"],
        ["a", "b", "c", "d"],
    )


def test_children_to_restart_rest_for_one_takes_the_later_children() -> None:
    """rest_for_one: the failed child and those after it; earlier ones are untouched."""
    assert children_to_restart(Strategy.REST_FOR_ONE, ["a", "b", "c", "d"], "b") == (
        ["d", "c"],
        ["b", "c", "d"],
    )
    assert children_to_restart(Strategy.REST_FOR_ONE, ["a", "b"], "b") == ([], ["b"])


def test_children_to_restart_unknown_child_is_an_error() -> None:
    """A failed id that is not among the children is a programming error."""
    with pytest.raises(ValueError, match="'z'"):
        children_to_restart(Strategy.ONE_FOR_ALL, ["a"], "z")


def test_auto_shutdown_rules() -> None:
    """OTP auto_shutdown: never; any_significant on one significant exit; all_significant on the last."""
    kw = {"exited_significant": True, "restarted": False}
    assert not auto_shutdown_due(AutoShutdown.NEVER, significant_running=0, **kw)
    assert auto_shutdown_due(AutoShutdown.ANY_SIGNIFICANT, significant_running=2, **kw)
    assert not auto_shutdown_due(AutoShutdown.ALL_SIGNIFICANT, significant_running=1, **kw)
    assert auto_shutdown_due(AutoShutdown.ALL_SIGNIFICANT, significant_running=0, **kw)
    assert not auto_shutdown_due(
        AutoShutdown.ANY_SIGNIFICANT, exited_significant=False, restarted=False, significant_running=0
    )
    assert not auto_shutdown_due(
        AutoShutdown.ANY_SIGNIFICANT, exited_significant=True, restarted=True, significant_running=0
    )


def test_exit_reason_text_and_data() -> None:
    """Exit reasons say what happened and travel as plain data."""
    assert str(NORMAL) == "normal" and str(SHUTDOWN) == "shutdown"
    reason = abnormal(signal=9, detail="hung")
    assert str(reason) == "abnormal (signal 9, hung)"
    assert reason.to_dict() == {"kind": "abnormal", "code": None, "signal": 9, "detail": "hung"}
    assert reason.kind == ExitKind.ABNORMAL


def test_reverse_start_order() -> None:
    """Shutdown order is the reverse of start order."""
    assert reverse_start_order({"b", "a", "c"}, ["a", "b", "c"]) == ["c", "b", "a"]
