"""The table of benchmarks: every benchmark module of codelm.evaluate.benchmarks has the same functions,

    NAMES                                   the benchmark names it scores
    load_problems(benchmark, data_dir)      its problems, one dict each with a task id
    plan(benchmark, options)                its scoring plan (codelm.evaluate.scoring.ScoringPlan)
    score(benchmark, samples, out, options) = codelm.evaluate.scoring.score(plan(...), samples, out, options)

and is registered here by the name a protocol's `scorer` field gives. `codelm score` and `codelm eval`
find a benchmark's module here. The table imports the modules; none of them imports it back."""
from __future__ import annotations

from pathlib import Path
from types import ModuleType

from codelm.errors import CodelmError
from codelm.evaluate import passk
from codelm.evaluate.benchmarks import apps, ds1000, evalplus, gsm8k, humaneval, lcc, mbpp, multipl_e
from codelm.evaluate.scoring import ScoreOptions, summary_path
from codelm.files import claim_output, mark_output

SCORERS: dict[str, ModuleType] = {
    "humaneval": humaneval,  # HumanEval and the infilling sets: assert-based tests
    "mbpp": mbpp,
    "evalplus": evalplus,  # HumanEval+ and MBPP+: the reference's outputs on many inputs
    "multipl-e": multipl_e,  # the language's toolchain proven first
    "apps": apps,
    "ds1000": ds1000,
    "gsm8k": gsm8k,  # gsm8k and gsm8k-pal
    "lcc": lcc,  # nothing runs: exact match, edit similarity, BLEU
}


def benchmark_names() -> list[str]:
    return [name for module in SCORERS.values() for name in module.NAMES]


def module_for(benchmark: str) -> ModuleType:
    """The module that scores `benchmark`; an unknown name is refused with the valid ones."""
    key = benchmark.strip().lower()
    for module in SCORERS.values():
        if key in module.NAMES:
            return module
    raise CodelmError(f"unknown benchmark {benchmark!r}; valid names: {', '.join(benchmark_names())}")


def load_benchmark(benchmark: str, options: ScoreOptions = ScoreOptions()):
    """The scoring plan of `benchmark` (its problems and how its samples become rows)."""
    return module_for(benchmark).plan(benchmark.strip().lower(), options)


def score(benchmark: str, samples, out=None, options: ScoreOptions = ScoreOptions()) -> dict:
    """Score a samples file of any benchmark; returns the summary (also written beside the results)."""
    return module_for(benchmark).score(benchmark.strip().lower(), samples, out, options)


def score_samples(scorer: str, benchmark: str, samples_path, out_path, options: ScoreOptions) -> dict:
    """Score a samples file with the named scorer (a protocol's `scorer` field); returns the summary."""
    if scorer not in SCORERS:
        raise CodelmError(f"no scorer {scorer!r}; known: {', '.join(SCORERS)}")
    return SCORERS[scorer].score(benchmark, samples_path, out_path, options)


def score_main(benchmark: str, samples: str, *, out: str | None = None, workers: int | None = None,
               timeout: float | None = None, sandbox: str = "auto", data_dir: str | None = None, k: str = "1,10,100",
               resume: bool = False, force: bool = False, progress: bool = False) -> dict:
    """`codelm score` (flags in codelm/cli.py): the outputs claimed first (never what codelm did not
    write, never the samples themselves), then the samples scored; returns the summary."""
    try:
        ks = passk.parse_ks(k)
    except ValueError as e:
        raise CodelmError(str(e)) from None
    if workers is not None and workers < 1:
        raise CodelmError(f"--workers must be at least 1, got {workers}")
    module = module_for(benchmark)
    out_path = Path(out) if out else Path(str(samples) + "_results.jsonl")
    for path in (out_path, summary_path(out_path)):
        claim_output(path, "score-results", folder=False, force=force, inputs=[samples], what="results file")
    options = ScoreOptions(data_dir=data_dir, workers=workers, sandbox=sandbox, timeout=timeout, ks=tuple(ks),
                           resume=resume, progress=progress)
    summary = module.score(benchmark.strip().lower(), samples, out_path, options)
    for path in (out_path, summary_path(out_path)):
        mark_output(path, "score-results")
    return summary
