"""One shape for field-level validation errors, in HTTP answers and rejected events."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def field_errors(errors: Iterable[Any]) -> list[dict[str, str]]:
    """Pydantic error dicts as ``{"loc": "a.b", "code": "...", "msg": "..."}``."""
    return [{"loc": ".".join(str(p) for p in e["loc"]), "code": e["type"], "msg": e["msg"]} for e in errors]
