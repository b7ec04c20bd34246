"""The thread-free selectors loop: timers, deferred calls, readers, signals, re-entrancy."""

from __future__ import annotations

import os
import signal

from openfang.supervisor.loop import Loop, Serial


def test_loop_call_later_runs_timers_in_time_order_and_cancel_skips() -> None:
    """Timers fire in deadline order; a cancelled one never runs."""
    loop = Loop()
    seen: list[str] = []
    loop.call_later(0.03, lambda: seen.append("late"))
    loop.call_later(0.01, lambda: seen.append("early"))
    loop.call_later(0.02, lambda: seen.append("cancelled")).cancel()
    assert loop.run_until(lambda: len(seen) == 2, timeout=5)
    loop.run_until(lambda: False, timeout=0.05)
    assert seen == ["early", "late"]
    loop.close()


def test_loop_call_soon_runs_on_the_next_iteration_in_order() -> None:
    """call_soon callbacks run in FIFO order, after the current callback."""
    loop = Loop()
    seen: list[int] = []

    def first() -> None:
        seen.append(1)
        loop.call_soon(lambda: seen.append(3))

    loop.call_soon(first)
    loop.call_soon(lambda: seen.append(2))
    assert loop.run_until(lambda: len(seen) == 3, timeout=5)
    assert seen == [1, 2, 3]
    loop.close()


def test_loop_call_when_idle_waits_for_the_loop_to_have_nothing_to_do_and_runs_once() -> None:
    """call_when_idle runs after the queued calls, the readable fds and the due timers (chained ones too),
    once, the first time the loop would wait; a callback queued later waits for the next idle moment."""
    loop = Loop()
    seen: list[str] = []
    r, w = os.pipe()
    os.write(w, b"x")
    loop.add_reader(r, lambda: seen.append(f"read:{os.read(r, 10).decode()}"))

    def soon(n: int) -> None:
        seen.append(f"soon{n}")
        if n < 3:
            loop.call_soon(lambda: soon(n + 1))

    loop.call_when_idle(lambda: seen.append("idle"))
    loop.call_soon(lambda: soon(1))
    loop.call_later(0.0, lambda: seen.append("timer"))
    assert loop.run_until(lambda: "idle" in seen, timeout=5)
    assert seen.index("idle") == len(seen) - 1
    assert {"soon1", "soon2", "soon3", "read:x", "timer"} <= set(seen)
    loop.run_until(lambda: False, timeout=0.02)
    assert seen.count("idle") == 1
    loop.call_when_idle(lambda: seen.append("again"))
    os.write(w, b"y")
    assert loop.run_until(lambda: "again" in seen, timeout=5)
    assert seen[-2:] == ["read:y", "again"]
    loop.remove_reader(r)
    os.close(r)
    os.close(w)
    loop.close()


def test_loop_reader_fires_when_fd_is_readable_and_stops_after_remove() -> None:
    """add_reader calls back on readability; remove_reader stops it."""
    loop = Loop()
    r, w = os.pipe()
    got: list[bytes] = []
    loop.add_reader(r, lambda: got.append(os.read(r, 10)))
    os.write(w, b"hi")
    assert loop.run_until(lambda: got == [b"hi"], timeout=5)
    assert loop.remove_reader(r) and not loop.remove_reader(r)
    os.write(w, b"again")
    loop.run_until(lambda: False, timeout=0.05)
    assert got == [b"hi"]
    os.close(r)
    os.close(w)
    loop.close()


def test_loop_signal_handler_runs_in_the_loop_and_is_restored_on_close() -> None:
    """A signal becomes a loop callback; close() restores the previous handler."""
    loop = Loop()
    before = signal.getsignal(signal.SIGUSR1)
    seen: list[str] = []
    loop.add_signal_handler(signal.SIGUSR1, lambda: seen.append("usr1"))
    os.kill(os.getpid(), signal.SIGUSR1)
    assert loop.run_until(lambda: seen == ["usr1"], timeout=5)
    loop.close()
    assert signal.getsignal(signal.SIGUSR1) == before


def test_loop_run_until_times_out_and_is_reentrant() -> None:
    """run_until returns False on timeout; a callback may run the loop again for its own condition."""
    loop = Loop()
    assert loop.run_until(lambda: False, timeout=0.02) is False
    seen: list[str] = []

    def outer() -> None:
        loop.call_later(0.01, lambda: seen.append("inner"))
        assert loop.run_until(lambda: "inner" in seen, timeout=5)
        seen.append("outer")

    loop.call_soon(outer)
    assert loop.run_until(lambda: "outer" in seen, timeout=5)
    assert seen == ["inner", "outer"]
    loop.close()


def test_loop_failing_callback_is_logged_not_raised() -> None:
    """An exception in one callback does not stop the loop."""
    loop = Loop()
    seen: list[str] = []
    loop.call_soon(lambda: 1 / 0)
    loop.call_soon(lambda: seen.append("after"))
    assert loop.run_until(lambda: seen == ["after"], timeout=5)
    loop.close()


def test_loop_injected_clock_drives_timers() -> None:
    """With an injected clock, timers fire by that clock, not by the wall."""
    now = [100.0]
    loop = Loop(clock=lambda: now[0])
    seen: list[str] = []
    loop.call_later(50, lambda: seen.append("t"))
    loop.run_until(lambda: False, timeout=0)  # clock has not moved: nothing fires
    assert seen == [] and loop.time() == 100.0
    now[0] = 150.0
    loop.run_until(lambda: bool(seen), timeout=1)
    assert seen == ["t"]
    loop.close()


def test_loop_run_forever_until_stop() -> None:
    """run_forever returns after stop() is called from a callback."""
    loop = Loop()
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    loop.close()


def test_serial_runs_work_that_arrives_during_an_operation_right_after_it() -> None:
    """Work offered while an operation runs waits, then runs in arrival order once the operation ends."""
    loop = Loop()
    serial = Serial(loop)
    seen: list[str] = []
    with serial:
        serial.run(lambda: seen.append("queued 1"))
        with serial:  # operations nest
            serial.run(lambda: seen.append("queued 2"))
        seen.append("operation")
        assert serial.busy
    assert seen == ["operation"] and not serial.busy
    assert loop.run_until(lambda: len(seen) == 3, timeout=5)
    assert seen == ["operation", "queued 1", "queued 2"]
    serial.run(lambda: seen.append("now"))  # nothing in progress: runs at once
    assert seen[-1] == "now"
    loop.close()


def test_serial_clear_drops_the_queued_work() -> None:
    """Work queued behind an operation is dropped by clear() (a supervisor that stopped does none)."""
    loop = Loop()
    serial = Serial(loop)
    seen: list[str] = []
    with serial:
        serial.run(lambda: seen.append("late"))
        serial.clear()
    loop.run_until(lambda: False, timeout=0.05)
    assert seen == []
    loop.close()
