"""Stop strings, cut the one way everywhere: the sampler while it streams, every backend on its output,
and the benchmarks' protocols on a generation. The earliest occurrence of any non-empty stop wins."""
from __future__ import annotations

from typing import Iterable


def find_stop(text: str, stops: Iterable[str]) -> tuple[int, str] | None:
    """(index, stop) of the earliest stop string in text, or None."""
    best = None
    for s in stops:
        if s:
            i = text.find(s)
            if i >= 0 and (best is None or i < best[0]):
                best = (i, s)
    return best


def cut_at_stop(text: str, stops: Iterable[str]) -> tuple[str, bool]:
    """Text before the earliest stop string, and whether one was found."""
    hit = find_stop(text, stops)
    return (text, False) if hit is None else (text[:hit[0]], True)


def cut(text: str, stops: Iterable[str]) -> str:
    """Text before the earliest stop string (all of it when there is none)."""
    return cut_at_stop(text, stops)[0]
