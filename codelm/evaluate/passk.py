"""pass@k: the unbiased estimator of Chen et al. (2021), per task and averaged over tasks.

For a task with n samples of which c pass, pass@k = 1 - C(n-c, k) / C(n, k): the chance that at
least one of k samples drawn without replacement passes. It is defined only for k <= n; asking
for more is an error here (returning 1.0 for n < k, as MultiPL-E does, overstates results).
"""

from __future__ import annotations

from collections.abc import Iterable


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one task (n samples, c correct)."""
    if not (isinstance(n, int) and isinstance(c, int) and isinstance(k, int)):
        raise TypeError("n, c and k must be integers")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if k > n:
        raise ValueError(f"pass@{k} is undefined with only {n} samples (k must be <= n)")
    if n - c < k:
        return 1.0  # every draw of k samples contains a correct one
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k/i): a product of factors in (0, 1], stable for large n.
    failure = 1.0
    for i in range(n - c + 1, n + 1):
        failure *= 1.0 - k / i
    return 1.0 - failure


def parse_ks(text: str | Iterable[int]) -> list[int]:
    """'1,10,100' -> [1, 10, 100] (sorted, unique)."""
    if isinstance(text, str):
        try:
            ks = [int(part) for part in text.replace(" ", "").split(",") if part]
        except ValueError:
            raise ValueError(f"--k must be comma-separated integers, got {text!r}") from None
    else:
        ks = [int(k) for k in text]
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"--k needs positive integers, got {text!r}")
    return sorted(set(ks))


def per_task_table(counts: dict[str, tuple[int, int]], ks: Iterable[int]) -> list[dict]:
    """One row per task: task_id, n, c and pass@k for each k <= n (in the order of `counts`)."""
    rows = []
    for task_id, (n, c) in counts.items():
        row = {"task_id": task_id, "n": n, "c": c}
        for k in ks:
            if k <= n:
                row[f"pass@{k}"] = pass_at_k(n, c, k)
        rows.append(row)
    return rows


def totals(counts: dict[str, tuple[int, int]], ks: Iterable[int]) -> dict[str, float]:
    """Mean pass@k over tasks, for each k that every task has enough samples for (k <= min n)."""
    if not counts:
        return {}
    smallest_n = min(n for n, _ in counts.values())
    result = {}
    for k in ks:
        if k <= smallest_n:
            result[f"pass@{k}"] = sum(pass_at_k(n, c, k) for n, c in counts.values()) / len(counts)
    return result
