"""The length lab's statistics: 95% intervals on key-retrieval accuracy, and the paper's Table 18 pattern
checked statement by statement against them.

Key retrieval is exact match, so a cell is a count of hits out of n prompts. The interval is Wilson's score
interval on the hits pooled over the seeds (and over the key positions for a by-length number): it is
honest at 0 and n hits, where the normal approximation collapses to a point. Pooling treats the seeds'
prompts as one sample of one method; the spread between seeds (one seed may not learn the skill at all)
is reported beside it (the per-seed accuracies in results.json), not folded into the interval.
"""
from __future__ import annotations

import math

Z95 = 1.959963984540054       # the two-sided 95% normal quantile
CHANCE = 1 / 90               # a two-digit value (10..99) guessed uniformly
HIGH = 0.5                    # "high": the interval's lower end at least this
NEAR_ZERO = 0.1               # "near 0": the interval's upper end at most this


def wilson(hits: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval (lower, upper) for hits successes out of n trials."""
    if n <= 0 or not 0 <= hits <= n:
        raise ValueError(f"wilson: need 0 <= hits <= n and n > 0, got {hits}/{n}")
    p = hits / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # The interval always holds p; min/max keep rounding at 0 or n hits from putting it a hair outside.
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


def pooled(accuracies: list[float], n: int) -> dict:
    """Accuracies of cells of n prompts each (seeds, positions) pooled into one count with its interval."""
    hits = [round(a * n) for a in accuracies]
    total = n * len(hits)
    lo, hi = wilson(sum(hits), total)
    return {"mean": sum(hits) / total, "lo": lo, "hi": hi, "hits": sum(hits), "n": total}


# ------------------------------------------------------------ the pattern
def _cell(summary: dict, method: str, mult: int) -> dict | None:
    e = summary["methods"].get(method)
    n = str(mult * summary["L"])
    return None if e is None else e.get("key_retrieval_by_length", {}).get(n)


def _show(c: dict) -> str:
    return f"{100 * c['mean']:.0f}% [{100 * c['lo']:.0f}, {100 * c['hi']:.0f}]"


def pattern_checks(summary: dict) -> list[dict]:
    """Table 18's statements, each {"statement", "held", "evidence"}, judged by the 95% intervals: "high"
    means the lower end is at least 50%, "near 0" the upper end at most 10%, "above"/"below" intervals that
    do not overlap, "no better" the lower end not above the other's upper end. Statements whose methods or
    lengths this run lacks are left out."""
    L, ft = summary["L"], summary["lcft_length"] // summary["L"]
    mults = [n // L for n in summary["kr_lengths"]]
    beyond = [k for k in mults if k > ft]
    out = []

    def add(statement, cells, held):
        if all(c is not None for _, c in cells):
            out.append({"statement": statement, "held": bool(held(*[c for _, c in cells])),
                        "evidence": "; ".join(f"{name} {_show(c)}" for name, c in cells)})

    def row(method, ks):
        return [(f"{k}L", _cell(summary, method, k)) for k in ks]

    if 1 in mults and 2 in mults:
        later = [k for k in mults if k >= 2]
        add("base RoPE high at L and near 0 from 2L", row("rope", [1] + later),
            lambda first, *rest: first["lo"] >= HIGH and all(c["hi"] <= NEAR_ZERO for c in rest))
    past = [k for k in mults if k > 1]
    for k in past:
        add(f"θ→1e6 at inference only no better than base RoPE at {k}L",
            [("inference-only", _cell(summary, "rope-1e6-infer", k)), ("base", _cell(summary, "rope", k))],
            lambda a, b: a["lo"] <= b["hi"])
    falls = [k for k in (2, ft) if k in mults and k > 1]
    if 1 in mults and falls:
        add(f"LCFT θ=1e4 high at L, falling by {'–'.join(f'{k}L' for k in falls)}", row("lcft-1e4", [1] + falls),
            lambda first, *rest: first["lo"] >= HIGH and any(c["hi"] < first["lo"] for c in rest))
    inside = [k for k in mults if k <= ft]
    add(f"PI ×{ft} high up to {ft}L" + (", near 0 beyond" if beyond else ""), row("pi-ft", inside + beyond),
        lambda *cs: all(c["lo"] >= HIGH for c in cs[:len(inside)]) and all(c["hi"] <= NEAR_ZERO
                                                                            for c in cs[len(inside):]))
    add(f"LCFT θ=1e6 high up to {ft}L", row("lcft-1e6", inside), lambda *cs: all(c["lo"] >= HIGH for c in cs))
    others = [m for m in ("rope", "rope-1e6-infer", "lcft-1e4", "pi-ft") if m in summary["methods"]]
    for k in beyond:
        add(f"LCFT θ=1e6 clearly above every other RoPE row at {k}L",
            [("LCFT θ=1e6", _cell(summary, "lcft-1e6", k))] + [(summary["methods"][m]["label"], _cell(summary, m, k))
                                                             for m in others],
            lambda mine, *rest: all(mine["lo"] > c["hi"] for c in rest))
    return out
