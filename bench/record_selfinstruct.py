"""Record a real model's answers to `codelm selfinstruct`, for the replay test.

tests/test_selfinstruct_recorded.py runs the self-instruct pipeline against answers a real model
wrote. No large model is reachable here, so this script makes a small one that codelm itself
trains to be a (weak) self-instruct teacher, serves it, and records what it says:

  1 data      template dialogs for the three generating stages, the user turn being exactly the
              chat prompt codelm.selfinstruct sends (questions_prompt, unit_tests_prompt,
              solution_prompt with chat=True): a numbered list of short function-writing questions
              drawn from a family of templates (TASKS), 5 asserts in [TESTS] tags, a one-line
              solution in [PYTHON] tags
  2 train     a fresh small Llama trained on them with codelm's own loop (instruct source: loss on
              the answers only), on a byte-level BPE trained on the same dialogs
  3 record    `codelm serve` (start_server) with the trained model; run_selfinstruct with every
              stage on the openai backend (chat route) over HTTP, sampling with temperature; each
              request the pipeline sends and the answer the server gave are recorded as they come
              back. Pipeline seeds are tried in order until a run shows what the test must see
              (a duplicate question, parsed tests, a kept solution and one rejected by execution);
              the seeds tried and the one chosen go into the fixture's header.

Nothing recorded is edited. The fixture (JSONL) is one header line (provenance: model weights
sha256, model shape, training recipe, data settings, codelm commit, date, the pipeline settings
and the recorded run's summary) and then one line per request: stage, prompt, sampling settings,
seed, and the completion text with its finish reason.

    OMP_NUM_THREADS=1 .venv/bin/python bench/record_selfinstruct.py [--fresh] [--work DIR] [--steps N]

The defaults are the settings of the committed fixture: a 1.0M-parameter model (dim 128, 4 layers),
600 steps of 8 x 512 tokens, about 5 minutes on one thread, then about 8 s per pipeline run.
A rerun reuses the work folder's data, tokenizer and trained model (training resumes from its last
checkpoint); --fresh starts over.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from codelm.files import write_jsonl

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "selfinstruct_recorded.jsonl"
FIXTURE_FORMAT = 1


# ----------------------------------------------------------------------------- the template family
@dataclass(frozen=True)
class Task:
    names: tuple[str, ...]  # function names a question may use for this task
    params: str
    descriptions: tuple[str, ...]  # "... that {description}."
    body: str  # the expression the solution returns
    inputs: tuple  # test inputs (one argument, or a tuple of two); 5 of them make a test block


NUMBERS2 = ((1, 2), (2, 3), (-1, 1), (0, 0), (10, 5), (7, -2))
NUMBERS1 = (2, 3, 0, -4, 5, 10)
STRINGS = ("abc", "", "hello", "ab", "code", "xyz")
LISTS = ((1, 2, 3), (5,), (0, 9), (7, 7, 1), (4, 3), (-2, 8, 6))

TASKS = (
    Task(("add", "add_numbers", "sum_two"), "a, b", ("returns the sum of two numbers", "adds two numbers"),
         "a + b", NUMBERS2),
    Task(("subtract", "difference", "minus"), "a, b",
         ("returns the difference of two numbers", "subtracts b from a"), "a - b", NUMBERS2),
    Task(("multiply", "product", "times"), "a, b",
         ("returns the product of two numbers", "multiplies two numbers"), "a * b", NUMBERS2),
    Task(("maximum", "larger", "max_of_two"), "a, b", ("returns the larger of two numbers",), "max(a, b)", NUMBERS2),
    Task(("minimum", "smaller", "min_of_two"), "a, b", ("returns the smaller of two numbers",), "min(a, b)",
         NUMBERS2),
    Task(("square", "squared"), "x", ("returns x squared", "returns the square of a number"), "x * x", NUMBERS1),
    Task(("cube", "cubed"), "x", ("returns x cubed", "returns the cube of a number"), "x ** 3", NUMBERS1),
    Task(("double", "twice"), "x", ("returns twice a number", "doubles a number"), "2 * x", NUMBERS1),
    Task(("negate", "negative"), "x", ("returns the negation of a number",), "-x", NUMBERS1),
    Task(("absolute", "abs_value"), "x", ("returns the absolute value of a number",), "abs(x)", NUMBERS1),
    Task(("is_even", "even"), "n", ("checks whether a number is even", "returns True if a number is even"),
         "n % 2 == 0", NUMBERS1),
    Task(("is_odd", "odd"), "n", ("checks whether a number is odd", "returns True if a number is odd"),
         "n % 2 == 1", NUMBERS1),
    Task(("reverse", "reverse_string"), "s", ("reverses a string", "returns a string backwards"), "s[::-1]",
         STRINGS),
    Task(("upper", "to_upper", "shout"), "s", ("converts a string to upper case",), "s.upper()", STRINGS),
    Task(("length", "str_len"), "s", ("returns the length of a string",), "len(s)", STRINGS),
    Task(("first", "head"), "xs", ("returns the first element of a list",), "xs[0]", LISTS),
    Task(("last", "tail"), "xs", ("returns the last element of a list",), "xs[-1]", LISTS),
    Task(("total", "list_sum"), "xs", ("returns the sum of a list of numbers",), "sum(xs)", LISTS),
    Task(("count_items", "size"), "xs", ("returns the number of elements in a list",), "len(xs)", LISTS),
    Task(("largest", "list_max"), "xs", ("returns the largest element of a list",), "max(xs)", LISTS),
    Task(("smallest", "list_min"), "xs", ("returns the smallest element of a list",), "min(xs)", LISTS),
)
OPENINGS = ("Write a function", "Write a Python function", "Create a function")


def question_of(task: Task, name: str, description: str, opening: str) -> str:
    return f"{opening} {name}({task.params}) that {description}."


def all_questions() -> list[tuple[Task, str, str]]:
    """(task, function name, question) for every question of the family."""
    return [(t, n, question_of(t, n, d, o)) for t in TASKS for n in t.names for d in t.descriptions
            for o in OPENINGS]


def _literal(value) -> str:
    return repr(list(value)) if isinstance(value, tuple) else repr(value)


def call_of(task: Task, name: str, value) -> str:
    args = ", ".join(map(repr, value)) if task.params.count(",") == 1 else _literal(value)
    return f"{name}({args})"


def expected(task: Task, value):
    params = [p.strip() for p in task.params.split(",")]
    values = value if len(params) == 2 else (list(value) if isinstance(value, tuple) else value,)
    return eval(task.body, {}, dict(zip(params, values)))  # our own template expressions


def test_lines(task: Task, name: str, rng: random.Random) -> list[str]:
    """Five asserts: the task's six inputs in order, one of them left out."""
    drop = rng.randrange(len(task.inputs))
    return [f"assert {call_of(task, name, v)} == {expected(task, v)!r}"
            for i, v in enumerate(task.inputs) if i != drop]


def tests_answer(lines: list[str]) -> str:
    body = "".join(f"# Test case {i}:\n{line}\n" for i, line in enumerate(lines, 1))
    return f"[TESTS]\n{body}[/TESTS]"


def solution_answer(task: Task, name: str) -> str:
    return f"[PYTHON]\ndef {name}({task.params}):\n    return {task.body}\n[/PYTHON]"


def make_dialogs(n_lists: int, n_tests: int, n_solutions: int, seed: int) -> list[dict]:
    """Training dialogs for the three stages, the user turns being the pipeline's chat prompts."""
    from codelm.selfinstruct import questions_prompt, solution_prompt, unit_tests_prompt

    rng = random.Random(seed)
    family = all_questions()
    dialogs = []

    def dialog(user, answer, stage):
        return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
                "stage": stage}

    for _ in range(n_lists):
        picked = rng.sample(family, rng.randint(6, 10))
        answer = "\n".join(f"{i}. {q}" for i, (_, _, q) in enumerate(picked, 1))
        dialogs.append(dialog(questions_prompt(chat=True), answer, "questions"))
    for _ in range(n_tests):
        task, name, q = rng.choice(family)
        dialogs.append(dialog(unit_tests_prompt(q, chat=True), tests_answer(test_lines(task, name, rng)), "tests"))
    for _ in range(n_solutions):
        task, name, q = rng.choice(family)
        shown = rng.choice(test_lines(task, name, rng))
        dialogs.append(dialog(solution_prompt(q, shown, chat=True), solution_answer(task, name), "solutions"))
    rng.shuffle(dialogs)
    return dialogs


# ----------------------------------------------------------------------------- training


def prepare(work: Path, args) -> tuple[dict, Path]:
    """Dialogs (train/valid) and a BPE trained on them; reused when present."""
    from codelm.tokenizer import Tokenizer, train_tokenizer

    data_dir, tok_dir = work / "dialogs", work / "tokenizer"
    data = {"n_lists": args.lists, "n_tests": args.test_dialogs, "n_solutions": args.solution_dialogs,
            "seed": args.data_seed, "vocab_size": args.vocab_size, "valid_dialogs": 60}
    stamp = work / "data.json"
    if stamp.exists() and json.loads(stamp.read_text()) == data and (tok_dir / "tokenizer.json").exists():
        return data, tok_dir
    dialogs = make_dialogs(args.lists, args.test_dialogs, args.solution_dialogs, args.data_seed)
    valid = make_dialogs(6, 18, 36, args.data_seed + 1)
    data_dir.mkdir(parents=True, exist_ok=True)
    strip = lambda ds: [{"messages": d["messages"]} for d in ds]  # noqa: E731
    write_jsonl(data_dir / "train.jsonl", strip(dialogs))
    write_jsonl(data_dir / "valid.jsonl", strip(valid))
    texts = [f"[INST] {d['messages'][0]['content']} [/INST] {d['messages'][1]['content']}" for d in dialogs]
    tok = train_tokenizer(texts, args.vocab_size, show_progress=False)
    shutil.rmtree(tok_dir, ignore_errors=True)
    tok.save(tok_dir)
    Tokenizer.load(tok_dir)
    stamp.write_text(json.dumps(data, indent=1))
    return data, tok_dir


def recipe_dict(work: Path, tok_dir: Path, args) -> dict:
    return {
        "run": {"name": "selfinstruct-teacher", "out_dir": str(work / "run"), "seed": 0},
        "model": {"preset": "tiny", "config": {"dim": args.dim, "n_layers": args.layers, "n_heads": args.heads,
                                               "n_kv_heads": args.heads, "max_seq_len": 1024}},
        "tokenizer": {"path": str(tok_dir)},
        "data": {"sources": [{"path": str(work / "dialogs"), "name": "selfinstruct", "kind": "instruct"}],
                 "seq_len": args.seq_len, "fim_rate": 0.0},
        "train": {"max_steps": args.steps, "batch_tokens": args.seq_len * args.batch, "micro_batch_size": args.batch,
                  "lr": args.lr, "warmup_steps": 10, "final_lr_ratio": 0.1, "eval_every": 0,
                  "eval_sequences": 16, "checkpoint_every": 25, "keep_checkpoints": 1, "log_every": 5,
                  "threads": args.threads},
    }


def train_teacher(work: Path, tok_dir: Path, args) -> tuple[Path, dict, dict]:
    from codelm.train.loop import train
    from codelm.train.state import list_checkpoints
    from codelm.train.recipe import recipe_from_dict

    raw = recipe_dict(work, tok_dir, args)
    recipe = recipe_from_dict(raw, "record_selfinstruct")
    resume = bool(list_checkpoints(recipe.out_dir)) or (recipe.out_dir / "final" / "config.json").exists()
    t0 = time.time()
    result = train(recipe, resume=resume, show_progress=True)
    summary = json.loads((recipe.out_dir / "summary.json").read_text())
    print(f"record: trained in {time.time() - t0:.0f} s this call; train loss {summary['train_loss']:.3f}, "
          f"valid loss {summary['valid_loss']:.3f}", flush=True)
    return result.final_dir, raw, summary


def weights_sha256(final_dir: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(final_dir.glob("*.safetensors")):
        h.update(f.read_bytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- recording
class RecordingBackend:
    """Passes requests to a real backend and keeps each request with the answer it got."""

    def __init__(self, inner, stage: str, log: list):
        self.inner, self.stage, self.log = inner, stage, log
        self.name, self.batch_size = inner.name, inner.batch_size

    def identity(self) -> dict:
        return self.inner.identity()

    def generate(self, requests):
        completions = self.inner.generate(requests)
        for r, c in zip(requests, completions):
            self.log.append({"stage": self.stage, "prompt": r.prompt, "seed": r.seed, "temperature": r.temperature,
                             "top_p": r.top_p, "max_new_tokens": r.max_new_tokens, "stop": list(r.stop),
                             "text": c.text, "finish_reason": c.finish_reason, "tokens": c.tokens})
        return completions


def pipeline_config(out: Path, url: str, seed: int, args):
    from codelm.selfinstruct import SelfInstructConfig, StageModel

    stage = lambda: StageModel(backend="openai", model=url, chat=True)  # noqa: E731
    return SelfInstructConfig(
        out=str(out), questions=stage(), tests=stage(), solutions=stage(), question_prompts=args.question_prompts,
        n_tests=5, n_solutions=args.solutions, question_temperature=args.temperature,
        solution_temperature=args.solution_temperature,
        max_new_tokens={"questions": 220, "tests": 130, "solutions": 48},
        seed=seed, workers=2, timeout=2.0, progress=False)


def criteria(summary: dict, out: Path) -> dict:
    ex = summary["execution"]
    verdicts = [json.loads(line) for line in (out / "verdicts.jsonl").read_text().splitlines()]
    kept_at = {v["id"]: v["attempt"] for v in verdicts if v["passed"]}
    # A program that ran and failed a test, where a later attempt passed the same tests: execution
    # told a wrong solution from a right one (not merely rejected answers to wrong tests).
    wrong_then_right = [v for v in verdicts if v["status"] == "passed" and not v["passed"]
                        and v["attempt"] < kept_at.get(v["id"], -1)]
    return {"a duplicate question": summary["questions"]["duplicates"] >= 1,
            "tests parsed": summary["tests"]["tests_parsed"] >= 1,
            "a solution kept": ex["kept"] >= 1,
            "a solution rejected by execution": ex["failed"] >= 1,
            "a rejected solution and a kept one for the same tests": bool(wrong_then_right)}


def record(final_dir: Path, work: Path, args) -> tuple[int, list, dict, list, dict]:
    import torch

    from codelm.generate.backends import make_backend
    from codelm.model.checkpoint import load
    from codelm.selfinstruct import run_selfinstruct
    from codelm.serve import start_server

    torch.set_num_threads(args.threads)
    loaded = load(final_dir, dtype=torch.float32)
    server, _ = start_server(loaded.model, loaded.tokenizer, "selfinstruct-teacher")
    host, port = server.server_address[:2]
    url = f"http://{host}:{port}/v1"
    tried = []
    try:
        for seed in range(args.first_seed, args.first_seed + args.max_tries):
            out = work / f"pipeline-seed{seed}"
            shutil.rmtree(out, ignore_errors=True)
            log: list = []
            # One connection at a time: the server generates one request at a time anyway, and the
            # log then holds the requests in the order they were answered.
            inner = make_backend("openai", url, batch_size=8, chat=True, concurrency=1)
            backends = {s: RecordingBackend(inner, s, log) for s in ("questions", "tests", "solutions")}
            cfg = pipeline_config(out, url, seed, args)
            t0 = time.time()
            summary = run_selfinstruct(cfg, backends)
            met = criteria(summary, out)
            tried.append({"seed": seed, "seconds": round(time.time() - t0, 1), "criteria": met,
                          "kept": summary["execution"]["kept"], "failed": summary["execution"]["failed"],
                          "duplicates": summary["questions"]["duplicates"]})
            print(f"record: seed {seed}: {json.dumps(tried[-1])}", flush=True)
            if all(met.values()):
                return seed, log, summary, tried, cfg.settings()
    finally:
        server.shutdown()
        server.server_close()
    raise SystemExit(f"record: no seed in {args.first_seed}..{args.first_seed + args.max_tries - 1} gave a run "
                     f"with all criteria; tried: {tried}")


def git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "codelm"], cwd=REPO, capture_output=True,
                               text=True, check=True).stdout.strip()
        changed = [line[3:] for line in dirty.splitlines()]
        return commit + (f" (uncommitted changes in {', '.join(changed)})" if changed else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/codelm-selfinstruct-record")
    ap.add_argument("--out", default=str(FIXTURE))
    ap.add_argument("--fresh", action="store_true", help="delete the work folder first")
    ap.add_argument("--threads", type=int, default=1)
    # data and model
    ap.add_argument("--lists", type=int, default=300, help="stage 1 training dialogs")
    ap.add_argument("--test-dialogs", type=int, default=1500)
    ap.add_argument("--solution-dialogs", type=int, default=2500)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--vocab-size", type=int, default=1024)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=3e-3)
    # pipeline
    ap.add_argument("--question-prompts", type=int, default=3)
    ap.add_argument("--solutions", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=0.7, help="questions (and solutions)")
    ap.add_argument("--solution-temperature", type=float, default=1.0)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--max-tries", type=int, default=8)
    args = ap.parse_args(argv)

    work = Path(args.work)
    if args.fresh:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    data, tok_dir = prepare(work, args)
    final_dir, recipe, train_summary = train_teacher(work, tok_dir, args)
    seed, log, summary, tried, settings = record(final_dir, work, args)

    import torch

    from codelm.model.checkpoint import load_checkpoint

    model, config = load_checkpoint(final_dir, dtype=torch.float32)
    header = {
        "codelm_selfinstruct_recording": FIXTURE_FORMAT,
        "what": "requests codelm selfinstruct sent to a real `codelm serve` (openai backend, chat route) and the "
                "answers the served model gave, unedited; made by bench/record_selfinstruct.py",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "codelm_commit": git_commit(),
        "command": "bench/record_selfinstruct.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": {"weights_sha256": weights_sha256(final_dir),
                  "parameters": sum(p.numel() for p in model.parameters()),
                  "shape": {k: getattr(config, k) for k in ("dim", "n_layers", "n_heads", "n_kv_heads",
                                                            "vocab_size", "max_seq_len")},
                  "tokenizer": f"codelm byte-level BPE, {config.vocab_size} tokens (asked for {data['vocab_size']}), "
                               "trained on the training dialogs"},
        "training": {"recipe": recipe, "data": data, "result": train_summary,
                     "template_family": f"{len(TASKS)} tasks, {len(all_questions())} distinct questions"},
        "seed_choice": {"rule": "pipeline seeds tried in order; the first whose run shows all criteria is kept",
                        "question_temperature": args.temperature,
                        "solution_temperature": args.solution_temperature,
                        "tried": tried, "chosen": seed},
        "settings": settings,
        "summary": summary,
        "requests": len(log),
        "total_seconds": round(time.time() - started, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(out, [header] + log)
    print(f"record: {len(log)} requests -> {out} ({out.stat().st_size / 1024:.0f} KiB); seed {seed}; "
          f"summary {json.dumps(summary)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
