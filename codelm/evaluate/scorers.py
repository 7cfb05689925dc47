"""The table of scorers: every benchmark's samples file is scored through one signature,
`scorer(benchmark, samples_path, out_path, options) -> summary`, looked up here by the protocol's
`scorer` name. The table imports the scorers; none of them imports it back."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from codelm.errors import CodelmError
from codelm.evaluate import runner
from codelm.evaluate.benchmarks import apps, ds1000, gsm8k, lcc


@dataclass(frozen=True)
class ScoreOptions:
    """How to score, the same for every benchmark (each uses what applies to it)."""

    data_dir: str | None = None
    workers: int | None = None
    sandbox: str = "auto"
    timeout: float | None = None  # the floor of a task's CPU limit (APPS: per test, DS-1000: per problem)
    ks: tuple[int, ...] = (1, 10, 100)
    resume: bool = False
    progress: bool = True


def _runner(benchmark, samples_path, out_path, o: ScoreOptions) -> dict:
    return runner.score(benchmark, samples_path, out_path, workers=o.workers, timeout=o.timeout, sandbox=o.sandbox,
                        data_dir=o.data_dir, ks=o.ks, resume=o.resume, progress=o.progress)


def _with_own_loop(module) -> Callable:
    def score(benchmark, samples_path, out_path, o: ScoreOptions) -> dict:
        return module.score(benchmark, samples_path, out_path, data_dir=o.data_dir, workers=o.workers,
                            sandbox=o.sandbox, timeout=o.timeout, ks=o.ks, resume=o.resume, progress=o.progress)
    return score


def _gsm8k(benchmark, samples_path, out_path, o: ScoreOptions) -> dict:
    return gsm8k.score(benchmark, samples_path, out_path, data_dir=o.data_dir, workers=o.workers, sandbox=o.sandbox,
                       ks=o.ks, progress=o.progress)


SCORERS: dict[str, Callable] = {
    "runner": _runner,  # HumanEval(+), MBPP(+), the infilling sets: codelm.evaluate.runner
    "multipl-e": _runner,  # the same runner, the language's toolchain proven first
    "apps": _with_own_loop(apps),
    "ds1000": _with_own_loop(ds1000),
    "lcc": _with_own_loop(lcc),  # nothing runs: exact match, edit similarity, BLEU
    "gsm8k": _gsm8k,  # gsm8k and gsm8k-pal
}


def score_samples(scorer: str, benchmark: str, samples_path, out_path, options: ScoreOptions) -> dict:
    """Score a samples file with the named scorer; returns the summary (also written beside the results)."""
    if scorer not in SCORERS:
        raise CodelmError(f"no scorer {scorer!r}; known: {', '.join(SCORERS)}")
    return SCORERS[scorer](benchmark, samples_path, out_path, options)
