"""Construction twins: a frozen slotted dataclass's values built without its ``__init__``.

A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__`` (and a slot descriptor's
``__set__`` is a call per field too): ~0.5-1.5 us for a value of a few fields, paid several times per message
on the workers' and the gateway's hot paths. A *twin* is a plain class with the very same slots: a value is
built on it with plain attribute stores and then made the frozen class by assigning ``__class__``, which
CPython allows only between classes of the same layout (the same slot names at the same offsets) and refuses
with TypeError otherwise. The result is an instance of the class in every way (type, equality, hash, repr,
``dataclasses.replace``). :func:`construction_twin` checks, once, at the caller's import, that the twin's
slots are the class's fields in order and that a probe value reads back as the class; the callers fill every
field (the names they fill are the names they pass, so a field added to the class fails their import).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

__all__ = ["construction_twin"]


def construction_twin(cls: type, names: tuple[str, ...]) -> Any:
    """A plain class with the slots ``names``, which must be the fields of the slotted dataclass ``cls`` in
    order; its instances, every slot set, become ``cls`` instances by ``obj.__class__ = cls`` (checked once
    here: TypeError if the names or the layouts differ)."""
    have = tuple(f.name for f in fields(cls))
    if have != names:
        raise TypeError(
            f"{cls.__name__}: the construction twin's fields {names} are not the class's fields {have}"
        )
    twin = type(f"_{cls.__name__}Twin", (), {"__slots__": names})
    probe = twin()
    for name in names:
        setattr(probe, name, f"<{name}>")
    probe.__class__ = cls  # TypeError when the layouts differ
    if any(getattr(probe, name) != f"<{name}>" for name in names):
        raise TypeError(
            f"{cls.__name__}: the construction twin's slots do not read back as the class's fields"
        )
    return twin
