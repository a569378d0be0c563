"""Turn pydantic's multi-line validation reports into one line naming the field."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError


class Frozen(BaseModel):
    """Base of every description: immutable, unknown keys rejected, no coercion surprises."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)


def one_line(exc: ValidationError, source: str = "") -> str:
    """The first error of ``exc`` as ``source: field.path: message``."""
    err = exc.errors(include_url=False)[0]
    loc = ".".join(
        f"[{p}]" if isinstance(p, int) else str(p) for p in err.get("loc", ())
    ).replace(".[", "[")
    msg = err.get("msg", "invalid value")
    # pydantic prefixes errors raised in our own validators with "Value error, "
    msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if err.get("type") == "extra_forbidden":
        msg = "unknown key"
    inp = err.get("input")
    shown = ""
    if err.get("type") not in ("missing", "value_error") and not isinstance(inp, (dict, list)):
        shown = f" (got {inp!r})"
    parts = [p for p in (source, loc) if p]
    more = len(exc.errors()) - 1
    tail = f" [+{more} more]" if more > 0 else ""
    return ": ".join(parts + [msg + shown]) + tail
