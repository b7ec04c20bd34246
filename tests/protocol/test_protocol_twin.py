"""Construction twins (protocol/twin.py): a value built on the twin is an instance of the frozen class in
every way, and a twin that does not match the class (names, order, layout) is refused when it is made."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

from openfang.protocol.twin import construction_twin


@dataclass(frozen=True, slots=True)
class _Point:
    x: int
    y: int
    label: str = ""


@dataclass(frozen=True)
class _Loose:  # no slots: instances have a __dict__, another layout than any slotted twin
    x: int
    y: int


def test_twin_value_is_the_frozen_class_in_every_way() -> None:
    """Built on the twin and re-classed: type, equality, hash, repr, replace, asdict and frozenness as the
    class call's value."""
    twin = construction_twin(_Point, ("x", "y", "label"))
    value = twin()
    value.x, value.y, value.label = 1, 2, "p"
    value.__class__ = _Point
    called = _Point(1, 2, "p")
    assert type(value) is _Point and value == called and hash(value) == hash(called)
    assert repr(value) == repr(called) and dataclasses.asdict(value) == dataclasses.asdict(called)
    assert dataclasses.replace(value, y=3) == _Point(1, 3, "p")
    with pytest.raises(dataclasses.FrozenInstanceError):
        value.x = 5  # type: ignore[misc]


@pytest.mark.parametrize("names", [("x", "y"), ("y", "x", "label"), ("x", "y", "label", "extra")])
def test_twin_with_other_names_or_order_is_refused(names: tuple[str, ...]) -> None:
    """A twin whose names are not the class's fields in order (one missing, swapped, one more) is refused."""
    with pytest.raises(TypeError, match="are not the class's fields"):
        construction_twin(_Point, names)


def test_twin_of_a_class_with_another_layout_is_refused() -> None:
    """A dataclass without slots cannot take a slotted twin's instances: refused when the twin is made."""
    with pytest.raises(TypeError):
        construction_twin(_Loose, ("x", "y"))
