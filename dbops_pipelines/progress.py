"""Progress of long work (backup, restore), reported to callbacks. Neutral: every layer may import it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    raw_bytes: int
    stored_bytes: int
    elapsed: float

    @property
    def rate(self) -> float:
        return self.raw_bytes / self.elapsed if self.elapsed > 0 else 0.0
