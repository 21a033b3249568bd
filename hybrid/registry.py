"""Small explicit registries: a dict of named classes filled by a class decorator (no globals() lookup)."""

from __future__ import annotations

from typing import Callable


def registrar(table: dict[str, type], what: str) -> Callable[[str], Callable[[type], type]]:
    """`@register("name")` for `table`: stores the class under the name and as its `name` attribute."""

    def register(name: str) -> Callable[[type], type]:
        def add(cls: type) -> type:
            old = table.get(name)
            # a reloaded module (notebook autoreload) registers the same class again: that is fine
            if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
                raise ValueError(f"{what} {name!r} is already registered (by {old.__module__}.{old.__qualname__})")
            cls.name = name
            table[name] = cls
            return cls

        return add

    return register


def lookup(table: dict[str, type], name: str, what: str) -> type:
    """The class registered as `name`; an unknown name raises ValueError listing the valid ones."""
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; valid names are: {', '.join(sorted(table))}")
    return table[name]
