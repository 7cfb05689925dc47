"""`codelm eval`: generate with a backend under a benchmark's protocol, score in the sandbox, report.

A run lives in one folder (--out):
  run.json            the settings, the backend's identity, timings, state
  generations.jsonl   the generation cache: one line per finished generation (resume skips them)
  samples.jsonl       post-processed samples (task_id, completion or solution, raw generation, sample)
  results.jsonl       one verdict per sample; results_summary.json: pass@k, counts, per-task table
  report.json, report.md, passk.png   (codelm.evaluate.report)

`--resume` continues a killed run in the same folder: cached generations are reused (no sample is
generated twice), scoring continues from its journal, the report is rebuilt. The settings must be
those of the first run; a folder holding another run is refused rather than mixed.

Decoding defaults follow the paper: greedy when n = 1; when n > 1 top-p 0.95 and the protocol's
temperature (0.8, App. C; APPS 0.6).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from codelm.errors import CodelmError, ConfigError
from codelm.files import atomic_write, claim_output, open_run, write_json
from codelm.evaluate import report as report_mod
from codelm.evaluate.benchmarks import multipl_e
from codelm.evaluate.eval_config import EvalConfig
from codelm.evaluate.protocols import extract_code, get_protocol
from codelm.evaluate.scorers import score_samples
from codelm.evaluate.scoring import ScoreOptions
from codelm.generate.backends import GenerationCache, Request, generate_all, make_backend

RUN_VERSION = 1
PYTHON_SCORERS = ("humaneval", "mbpp", "evalplus")  # a chat answer's code block is the sample


def decoding(cfg: EvalConfig, protocol) -> dict:
    if cfg.n < 1:
        raise ConfigError(f"--n must be at least 1, got {cfg.n}")
    temperature = cfg.temperature if cfg.temperature is not None else \
        (protocol.sample_temperature if cfg.n > 1 else 0.0)
    if temperature < 0:
        raise ConfigError(f"--temperature must be >= 0, got {temperature}")
    top_p = cfg.top_p if cfg.top_p is not None else (0.95 if temperature > 0 else 1.0)
    if not 0 < top_p <= 1:
        raise ConfigError(f"--top-p must be in (0, 1], got {top_p}")
    max_new = cfg.max_new_tokens if cfg.max_new_tokens is not None else protocol.max_new_tokens
    if max_new < 1:
        raise ConfigError(f"--max-new-tokens must be at least 1, got {max_new}")
    return {"n": cfg.n, "temperature": temperature, "top_p": top_p, "max_new_tokens": max_new, "seed": cfg.seed}


def _settings(cfg: EvalConfig, protocol, dec: dict) -> dict:
    return {"benchmark": protocol.name, "scored_as": protocol.benchmark, "limit": cfg.limit, "chat": cfg.chat,
            "spm": protocol.spm, **dec}


def _open_run(out: Path, cfg: EvalConfig, settings: dict) -> dict:
    claim_output(out, "eval-run", folder=True, force=cfg.force,
                 what="run folder", legacy=lambda p: (p / "run.json").exists())
    run = open_run(out, settings, cfg.resume, kind="eval-run", header={"codelm_eval_run": RUN_VERSION})
    run.setdefault("timing", {})
    return run


def build_requests(tasks, protocol, dec: dict, chat: bool) -> list[tuple[Request, int]]:
    items = []
    for task in tasks:
        for j in range(dec["n"]):
            sampled = dec["temperature"] > 0
            # A chat server lays out [INST] itself: send it the bare message where the protocol has one.
            prompt = task.meta.get("chat_message", task.prompt) if chat else task.prompt
            items.append((Request(prompt, task.suffix, spm=protocol.spm, max_new_tokens=dec["max_new_tokens"],
                                  temperature=dec["temperature"], top_p=dec["top_p"],
                                  # A chat answer is prose around code: the completion stop words would cut it.
                                  stop=() if chat and task.suffix is None else tuple(task.stop),
                                  seed=dec["seed"] + j if sampled else None), j))
    return items


def to_sample(protocol, task, raw: str, sample: int, chat: bool) -> dict:
    if chat and task.suffix is None and protocol.scorer in PYTHON_SCORERS:
        code = extract_code(raw)
        # The scorer puts the benchmark's prompt in front of a HumanEval completion; a whole function
        # written after it simply redefines the stub.
        text = code if protocol.sample_field == "solution" or protocol.benchmark.startswith("mbpp") else "\n" + code
    else:
        text = protocol.postprocess(task, raw)
    return {"task_id": task.task_id, protocol.sample_field: text, "sample": sample, "raw": raw}


def run_eval(cfg: EvalConfig, backend=None) -> dict:
    """Run (or resume) one evaluation; returns the scoring summary. `backend` overrides cfg.backend (tests)."""
    protocol = get_protocol(cfg.benchmark)
    dec = decoding(cfg, protocol)
    tasks = protocol.load_tasks(cfg.data_dir)
    if cfg.limit is not None:
        if cfg.limit < 1:
            raise ConfigError(f"--limit must be at least 1, got {cfg.limit}")
        tasks = tasks[:cfg.limit]
    if protocol.scorer == "multipl-e":  # a toolchain that cannot run would score every sample 0: stop first
        multipl_e.check_toolchain(protocol.benchmark.removeprefix("multipl-e-"), cfg.sandbox)
    settings = _settings(cfg, protocol, dec)
    out = Path(cfg.out or os.path.join("eval-runs", protocol.name))
    run = _open_run(out, cfg, settings)
    if backend is None:
        options = {}
        if cfg.backend == "openai":
            options = dict(model=cfg.served_model, api_key=cfg.api_key or os.environ.get("OPENAI_API_KEY"),
                           chat=cfg.chat, infill=cfg.infill, tokenizer=cfg.tokenizer, concurrency=cfg.concurrency)
        elif cfg.chat:
            raise ConfigError("--chat needs --backend openai")
        backend = make_backend(cfg.backend, cfg.model, batch_size=cfg.batch_size, device=cfg.device,
                               dtype=cfg.dtype, quantize=cfg.quantize, **options)
    if protocol.adapt_tasks is not None:
        tasks = protocol.adapt_tasks(tasks, backend)
    identity = backend.identity()
    if run.get("backend") not in (None, identity):
        raise CodelmError(f"{out / 'run.json'}: --resume with another backend or model (was {run['backend']})")
    run.update(backend=identity, state="generating", tasks=len(tasks))
    write_json(out / "run.json", run)

    items = build_requests(tasks, protocol, dec, cfg.chat)
    cache = GenerationCache(out / "generations.jsonl", {"backend": identity, "settings": settings}).open()
    try:
        completions, stats = generate_all(backend, items, cache, progress=cfg.progress)
    finally:
        cache.close()
    timing = run.setdefault("timing", {})
    timing["generation_s"] = round(timing.get("generation_s", 0.0) + stats.seconds, 3)
    timing["generated_tokens"] = timing.get("generated_tokens", 0) + stats.tokens
    run.update(state="scoring", generated_this_session=stats.generated, reused_from_cache=stats.from_cache)
    write_json(out / "run.json", run)

    owners = [t for t in tasks for _ in range(dec["n"])]  # the task of each item, in build_requests' order
    rows = [to_sample(protocol, task, c.text, j, cfg.chat) for task, (_, j), c in zip(owners, items, completions)]
    samples_path = out / "samples.jsonl"
    atomic_write(samples_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))

    ks = [k for k in protocol.ks if k <= dec["n"]]
    started = time.monotonic()
    results_path = out / "results.jsonl"
    options = ScoreOptions(data_dir=cfg.data_dir, workers=cfg.workers, sandbox=cfg.sandbox, timeout=cfg.timeout,
                           ks=tuple(ks), resume=cfg.resume, progress=cfg.progress)
    summary = score_samples(protocol.scorer, protocol.benchmark, samples_path, results_path, options)
    timing["scoring_s"] = round(time.monotonic() - started, 3)
    run.update(state="done", summary={k: v for k, v in summary.items() if k.startswith("pass@")})
    write_json(out / "run.json", run)
    report_mod.write_report(out)
    return summary


def summary_line(cfg: EvalConfig, summary: dict) -> str:
    """What `codelm eval` prints at the end: the scores and where the report is."""
    out = Path(cfg.out or os.path.join("eval-runs", get_protocol(cfg.benchmark).name))
    scores = ", ".join(f"{k} {100 * v:.1f}" for k, v in summary.items() if k.startswith("pass@"))
    return (f"{summary['benchmark']}: {scores} ({summary['passed']}/{summary['samples']} samples passed); "
            f"report: {out / 'report.md'}")
