"""What the provider modules share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PayloadError(Exception):
    """A provider's callback or receipt that cannot be used: ``code`` is machine-readable and
    ``details`` are field errors (``{"loc", "code", "msg"}``); ingest answers it with a 422."""

    code: str
    message: str
    details: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}
