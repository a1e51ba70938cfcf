"""Where we are in a document being validated, and every error found in it.

Validators take a :class:`Context` (file, YAML key path) and raise the
:class:`~detaudit.errors.ConfigError` that :meth:`Context.fail` builds, in the
voice of Keras' argument errors. :meth:`Context.attempt` runs one validator and
records its error instead of stopping, so a file's errors are reported all at
once; :meth:`Context.raise_errors` raises them together at the end.
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from detaudit.errors import ConfigError, did_you_mean

__all__ = ["INVALID", "Context", "short_repr"]

T = TypeVar("T")


class _Recorded(ConfigError):
    """Errors already in a context's list, raised together; an enclosing :meth:`Context.attempt` does not add them again."""


class _Invalid:
    """What :meth:`Context.attempt` returns for a value whose error was recorded."""

    def __repr__(self) -> str:
        return "INVALID"


INVALID: Any = _Invalid()


_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxdict, _SHORT.maxlevel = 60, 60, 6, 6, 4, 3
_SHORT_LIMIT = 120


def short_repr(value: Any) -> str:
    """``repr(value)`` cut to a short prefix: an error message quotes what it received, never all of a huge value."""
    text = _SHORT.repr(value)
    return text if len(text) <= _SHORT_LIMIT else text[:_SHORT_LIMIT - 3] + "..."


class Context:
    """A position in a document (``source`` file and key ``path``) and the errors found so far."""

    def __init__(self, source: str, path: str = "", errors: list[ConfigError] | None = None):
        self.source, self.path = source, path
        self.errors: list[ConfigError] = [] if errors is None else errors

    def at(self, key: str | int) -> Context:
        """The context of a key (or a list index) below this one."""
        if isinstance(key, int):
            return Context(self.source, f"{self.path}[{key}]", self.errors)
        return Context(self.source, f"{self.path}.{key}" if self.path else key, self.errors)

    @property
    def where(self) -> str:
        return f"`{self.path}`" if self.path else "the top level"

    def fail(self, expected: str, received: Any, hint: str = "") -> ConfigError:
        """The error for a bad value: file, key path, what is expected and what was received."""
        name = self.path.rsplit(".", 1)[-1] or "value"
        return ConfigError(f"{self.source}: invalid value for {self.where}. Expected {expected.rstrip('.')}. "
                           f"Received {name}={short_repr(received)}.{hint}")

    def unknown_key(self, key: Any, allowed: Sequence[str]) -> ConfigError:
        """The error for a key that is not allowed here, with the nearest allowed key."""
        plain = isinstance(key, str) and len(key) <= 60 and key.isprintable()
        hint = did_you_mean(key, allowed) if plain else ""
        return ConfigError(f"{self.source}: unknown key `{key if plain else short_repr(key)}` in {self.where}.{hint} "
                           f"Allowed keys: {', '.join(allowed)}.")

    def attempt(self, validate: Callable[..., T], *args: Any) -> T:
        """Run ``validate(*args)``; on ConfigError record it and return :data:`INVALID`."""
        try:
            return validate(*args)
        except _Recorded:
            return INVALID
        except ConfigError as exc:
            self.errors.append(exc)
            return INVALID

    def raise_errors(self) -> None:
        """Raise every recorded error at once (one line each), if there are any."""
        if self.errors:
            raise _Recorded("\n".join(str(e) for e in self.errors))


def mapping(value: Any, ctx: Context, allowed: Sequence[str] | None = None) -> dict[str, Any]:
    """A mapping whose keys are all in ``allowed``; unknown keys are recorded, not fatal."""
    if not isinstance(value, dict):
        raise ctx.fail("a mapping", value)
    if allowed is not None:
        for key in value:
            if key not in allowed:
                ctx.errors.append(ctx.unknown_key(key, allowed))
    return {k: v for k, v in value.items() if allowed is None or k in allowed}


def as_list(value: Any) -> list[Any]:
    """A scalar where a list is expected means a one-element list."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


def integer(value: Any, ctx: Context, minimum: int = 0, maximum: int | None = None) -> int:
    """An integer in [minimum, maximum]; booleans and floats are refused."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (maximum is not None
                                                                                  and value > maximum):
        what = "a strictly positive integer" if minimum == 1 else f"an integer >= {minimum}"
        if maximum is not None:
            what += f" and at most {maximum:,}"
        raise ctx.fail(what, value)
    return value


def boolean(value: Any, ctx: Context) -> bool:
    if not isinstance(value, bool):
        raise ctx.fail("true or false", value)
    return value


def choice(value: Any, ctx: Context, allowed: Sequence[str]) -> str:
    # YAML 1.1 reads bare on/off as booleans: accept them where on/off are allowed.
    if isinstance(value, bool) and {"on", "off"} & set(allowed):
        value = "on" if value else "off"
    if value not in allowed:
        raise ctx.fail(f"one of {', '.join(allowed)}", value, did_you_mean(value, allowed))
    return value


def int_tuple(value: Any, ctx: Context, length: int | None, minimum: int = 1,
              maximum: int | None = None) -> tuple[int, ...]:
    """An int or a list of ints; a single int is broadcast to ``length``."""
    if isinstance(value, int) and not isinstance(value, bool) and length is not None:
        return (integer(value, ctx, minimum, maximum),) * length
    if not isinstance(value, (list, tuple)) or (length is not None and len(value) != length) or not value:
        n = f"{length} " if length is not None else ""
        bound = f" >= {minimum}" + (f" and at most {maximum:,}" if maximum is not None else "")
        raise ctx.fail(f"an integer or a list of {n}integers{bound}", value)
    return tuple(integer(v, ctx.at(i), minimum, maximum) for i, v in enumerate(value))
