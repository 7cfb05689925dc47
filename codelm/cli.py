"""The `codelm` command. Thin: it parses arguments and calls the library.

Each subcommand has one `_add_<name>` function that declares its arguments and
a handler that imports the library lazily (so `codelm --help` stays fast).
"""
from __future__ import annotations

import argparse
import os
import sys

from codelm.errors import CodelmError


# ------------------------------------------------------------------ checks at the edge
class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `codelm CMD: error: ...` and exit 2, like every other bad input."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _number(kind, low=None, high=None, low_open=False, what=""):
    """An argparse type: a number of `kind` within [low, high] (low excluded with low_open)."""
    def check(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value != value or value in (float("inf"), float("-inf")) or (low is not None and (value < low or (low_open and value == low))) or \
                (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value
    check.__name__ = what  # argparse names the type in some messages
    return check


POSITIVE_INT = _number(int, 1, what="an integer >= 1")
NONNEG_INT = _number(int, 0, what="an integer >= 0")
NONNEG_FLOAT = _number(float, 0.0, what="a number >= 0")
POSITIVE_FLOAT = _number(float, 0.0, low_open=True, what="a number > 0")
PROBABILITY = _number(float, 0.0, 1.0, low_open=True, what="a number in (0, 1]")
PORT = _number(int, 0, 65535, what="a port number 0..65535")
SEED = _number(int, 0, 2**63 - 1, what="an integer seed >= 0")


def unescape(text: str) -> str:
    """The escapes people type in a shell's quotes: \\n, \\t, \\r and \\\\ (a backslash); others stay as typed."""
    out, i = [], 0
    table = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in table:
            out.append(table[text[i + 1]])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def typed_text(text: str) -> str:
    """A text flag as typed: @FILE is kept for the command to read as is; otherwise escapes are read."""
    return text if text.startswith("@") else unescape(text)


def _settings(args, *leave_out) -> dict:
    """The parsed flags as the library function's keyword arguments (the parser's own entries left out)."""
    return {k: v for k, v in vars(args).items() if k not in ("command", "func", "experiment", *leave_out)}


def _add_force(p, what="the output"):
    p.add_argument("--force", action="store_true",
                   help=f"replace {what} even when it exists and codelm did not write it (never an input)")


# --------------------------------------------------------------------- info
def _add_info(sub):
    p = sub.add_parser("info", help="print a model preset's or checkpoint's shape and parameter count")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--preset", help="a preset name (e.g. codellama-7b, tiny)")
    g.add_argument("--model", help="a checkpoint directory (HF or Meta layout)")
    p.set_defaults(func=_run_info)


def _run_info(args):
    from codelm.model.info import info_main

    return info_main(preset=args.preset, model=args.model)


# ------------------------------------------------------------------ convert
def _add_convert(sub):
    p = sub.add_parser("convert", help="convert a checkpoint (Meta layout, any shard count) to the Hugging Face layout")
    p.add_argument("src", help="source checkpoint directory (Meta: params.json + consolidated.NN.pth; or HF)")
    p.add_argument("dst", help="destination directory (HF layout)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="dtype of the saved weights (default: as stored)")
    p.add_argument("--max-shard-size", default="5GB",
                   help="largest safetensors shard, e.g. 2GB or 500MB (default: %(default)s)")
    _add_force(p, "DST")
    p.set_defaults(func=_run_convert)


def _run_convert(args):
    from codelm.model.checkpoint import convert_main

    return convert_main(args.src, args.dst, dtype=args.dtype, max_shard_size=args.max_shard_size, force=args.force)


# ------------------------------------------------------- complete / infill
ESCAPES = "\\n, \\t and \\\\ are read as a newline, a tab and a backslash"


def _add_sampling_args(p):
    p.add_argument("--model", required=True, help="checkpoint directory (HF or Meta layout)")
    p.add_argument("--max-new-tokens", type=POSITIVE_INT, default=128,
                   help="most tokens to generate; prompt + this beyond the model's context is cut to the context "
                        "with a warning (default: %(default)s)")
    p.add_argument("--temperature", type=NONNEG_FLOAT, default=0.0, help="0 means greedy (default: %(default)s)")
    p.add_argument("--top-p", type=PROBABILITY, default=1.0,
                   help="nucleus sampling: keep the most likely tokens up to this mass (default: %(default)s, off)")
    p.add_argument("--top-k", type=NONNEG_INT, default=0,
                   help="sample among the k most likely tokens (default: %(default)s, off)")
    p.add_argument("--seed", type=SEED, default=None, help="random seed for sampling (default: none, random)")
    p.add_argument("--stop", action="append", default=None, type=unescape,
                   help=f"stop sequence, output is cut before it (repeatable; {ESCAPES})")
    p.add_argument("--no-stream", action="store_true", help="print the result at the end instead of streaming")
    _add_engine_flags(p, batch=False)


def _sampling(args) -> dict:
    """The flags of _add_sampling_args as complete_main's and infill_main's keyword arguments."""
    return dict(model=args.model, max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                top_k=args.top_k, seed=args.seed, stop=args.stop, stream=not args.no_stream, engine=_engine(args))


def _add_complete(sub):
    p = sub.add_parser("complete", help="continue a prompt")
    _add_sampling_args(p)
    p.add_argument("prompt", type=typed_text, help=f"the prompt text ({ESCAPES}), or @FILE to read it from a file as is")
    p.set_defaults(func=_run_complete)


def _run_complete(args):
    from codelm.generate.cli import complete_main

    return complete_main(args.prompt, **_sampling(args))


def _add_infill(sub):
    p = sub.add_parser("infill", help="fill in the middle between a prefix and a suffix")
    _add_sampling_args(p)
    p.add_argument("--prefix", default=None, type=typed_text, help=f"code before the gap ({ESCAPES}; @FILE reads a file as is)")
    p.add_argument("--suffix", default=None, type=typed_text, help=f"code after the gap ({ESCAPES}; @FILE reads a file as is)")
    p.add_argument("--file", default=None, help="a file with one <FILL> marker: text before is the prefix, after the suffix")
    p.add_argument("--spm", action="store_true", help="suffix-prefix-middle layout instead of PSM")
    p.set_defaults(func=_run_infill)


def _run_infill(args):
    from codelm.generate.cli import infill_main

    return infill_main(prefix=args.prefix, suffix=args.suffix, file=args.file, spm=args.spm, **_sampling(args))


# -------------------------------------------------------------------- score
def _add_score(sub):
    p = sub.add_parser("score", help="execute samples against a benchmark's tests in the sandbox and report pass@k")
    p.add_argument("--benchmark", required=True,
                   help="humaneval(+), mbpp(+), humaneval-infilling-*, multipl-e-LANG, apps(-LEVEL), ds1000, gsm8k(-pal), "
                        "lcc-*: every name in docs/scoring.md")
    p.add_argument("--samples", required=True, help="JSONL with task_id (MultiPL-E: or name) and completion per line")
    p.add_argument("--out", default=None, help="results JSONL (default: SAMPLES with _results.jsonl)")
    _add_force(p, "--out")
    p.add_argument("--workers", type=POSITIVE_INT, default=None, help="parallel workers (default: CPU count)")
    p.add_argument("--timeout", type=POSITIVE_FLOAT, default=None,
                   help="floor of the time limit in seconds (default: the benchmark's own: 3 per task, "
                        "APPS 4 per test, DS-1000 120 per problem)")
    p.add_argument("--sandbox", default="auto", choices=["auto", "none", "rlimits", "namespaces"],
                   help="isolation of the executed code (default: auto, the strongest available)")
    p.add_argument("--data-dir", default=None, help="benchmark data folder (default: $CODELM_DATA_DIR or the download cache)")
    p.add_argument("--k", default="1,10,100", help="comma-separated k for pass@k, only k <= n are reported (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue a killed run, keeping finished rows")
    p.set_defaults(func=_run_score)


def _run_score(args):
    import json

    from codelm.evaluate.scorers import score_main

    print(json.dumps(score_main(**_settings(args), progress=sys.stderr.isatty()), indent=1))
    return 0


# -------------------------------------------------------------------- train
def _add_train(sub):
    p = sub.add_parser("train", help="run a training recipe (code pretraining, LCFT, instruct)")
    p.add_argument("recipe", help="a recipe TOML file, or a shipped recipe by name (demo, codellama-7b, ...: codelm/recipes/)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the run folder")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set train.max_steps=100 (repeatable)")
    _add_force(p, "the run folder (run.out_dir)")
    p.set_defaults(func=_run_train)


def _run_train(args):
    from codelm.train.loop import train_main

    return train_main(args.recipe, resume=args.resume, overrides=args.set, force=args.force)


# ------------------------------------------------------------------- corpus
def _add_corpus(sub):
    p = sub.add_parser("corpus", help="build a deduplicated, decontaminated code corpus")
    p.add_argument("--source", action="append", default=None,
                   help="folder or git repository to collect (repeatable; default: the Python standard library)")
    p.add_argument("--out", required=True, help="output folder")
    _add_force(p, "--out")
    p.add_argument("--data-dir", default=None, help="benchmark data for decontamination (default: $CODELM_DATA_DIR)")
    p.add_argument("--valid-fraction", type=_number(float, 0.0, 1.0, what="a number in [0, 1]"), default=0.02,
                   help="share of files held out for validation (default: %(default)s)")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the split and of near-deduplication (default: %(default)s)")
    p.add_argument("--languages", default=None, help="comma-separated languages to keep, e.g. python,c (default: all)")
    p.add_argument("--exclude", action="append", default=None, metavar="GLOB",
                   help="leave out paths matching GLOB inside a source, e.g. 'test/*' (repeatable)")
    p.add_argument("--max-file-bytes", type=POSITIVE_INT, default=None, help="largest file kept (default 1000000)")
    p.set_defaults(func=_run_corpus)


def _run_corpus(args):
    from codelm.data.corpus import corpus_lines, corpus_main

    report = corpus_main(**_settings(args))
    summary, where = corpus_lines(report, args.out)
    print(summary)
    if report.decontamination.get("missing"):
        from codelm.errors import warn

        names = ", ".join(m.split(" (", 1)[0] for m in report.decontamination["missing"])
        warn(f"not decontaminated against {names} (data not found; see the report; set CODELM_DATA_DIR or --data-dir)")
    print(where)
    return 0


# --------------------------------------------------------------------- demo
def _add_demo(sub):
    p = sub.add_parser("demo", help="the miniature Code Llama pipeline, end to end on CPU")
    p.add_argument("--out", default="demo-out", help="output folder, resumed when it exists (default: %(default)s)")
    _add_force(p, "--out")
    p.add_argument("--quick", action="store_true", help="a much shorter run (for tests)")
    p.set_defaults(func=_run_demo)


def _run_demo(args):
    from codelm.demo import demo_main

    return demo_main(out=args.out, quick=args.quick, force=args.force)


# -------------------------------------------------------------------- serve
def _add_serve(sub):
    p = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API")
    p.add_argument("--model", required=True, help="checkpoint directory (HF or Meta layout)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=PORT, default=8000, help="port to listen on (default: %(default)s)")
    p.add_argument("--served-model-name", "--name", dest="name", default=None,
                   help="the model name clients ask for (default: the checkpoint folder's name, e.g. 'final' "
                        "for runs/demo/final)")
    p.add_argument("--max-body-bytes", type=POSITIVE_INT, default=1 << 20,
                   help="largest request body accepted; larger ones get 413 (default: %(default)s)")
    p.add_argument("--threads", type=POSITIVE_INT, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--quiet", action="store_true", help="do not log requests")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    _add_engine_flags(p)
    p.set_defaults(func=_run_serve)


def _run_serve(args):
    from codelm.serve import serve_main

    return serve_main(**_settings(args, *_ENGINE_FLAGS), engine=_engine(args))


_ENGINE_FLAGS = ("dtype", "quantize", "max_batch", "kernel")


def _add_engine_flags(p, batch: bool = True) -> None:
    """The native engine's flags, declared from codelm.generate.engine_config.EngineConfig (--max-batch only
    where several requests are generated)."""
    from codelm.generate.engine_config import EngineConfig

    _add_config_flags(p, EngineConfig, skip=() if batch else ("max_batch",))


def _engine(args):
    from codelm.generate.engine_config import EngineConfig

    return _config_from(args, EngineConfig, **({} if hasattr(args, "max_batch") else {"max_batch": 1}))


# --------------------------------------------------------------------- eval
def _add_config_flags(p, cls, skip=()) -> None:
    """One flag per field of a config dataclass (see codelm/evaluate/eval_config.py): required fields
    without a default become required flags, booleans switches, `kind` the value's check; `append` makes it
    repeatable (a list)."""
    import dataclasses

    kinds = {"positive_int": POSITIVE_INT, "nonneg_float": NONNEG_FLOAT, "positive_float": POSITIVE_FLOAT,
             "probability": PROBABILITY, "seed": SEED, "fraction": _number(float, 0.0, 1.0, what="a number in [0, 1]")}
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if not meta.get("cli", True) or f.name in skip:
            continue
        name = "--" + f.name.replace("_", "-")
        if meta.get("append"):  # repeatable, gathered into a list
            p.add_argument(name, dest=f.name, action="append", default=[], metavar=meta.get("metavar"),
                           help=meta.get("help"))
        elif f.default is dataclasses.MISSING:
            p.add_argument(name, required=True, help=meta.get("help"))
        elif f.default is False:
            p.add_argument(name, action="store_true", help=meta.get("help"))
        else:
            p.add_argument(name, default=f.default, type=kinds.get(meta.get("kind")), choices=meta.get("choices"),
                           help=meta.get("help"))


def _config_from(args, cls, **settings):
    import dataclasses

    names = {f.name for f in dataclasses.fields(cls) if f.metadata.get("cli", True) and hasattr(args, f.name)}
    return cls(**{name: getattr(args, name) for name in names}, **settings)


def _add_eval(sub):
    from codelm.evaluate.eval_config import EvalConfig

    p = sub.add_parser("eval", help="generate, score and report a benchmark under the paper's protocol")
    _add_config_flags(p, EvalConfig)
    p.set_defaults(func=_run_eval)


def _run_eval(args):
    from codelm.evaluate.eval import run_eval, summary_line
    from codelm.evaluate.eval_config import EvalConfig

    cfg = _config_from(args, EvalConfig, progress=sys.stderr.isatty())
    print(summary_line(cfg, run_eval(cfg)))
    return 0


# ------------------------------------------------------------------- report
def _add_report(sub):
    p = sub.add_parser("report", help="rebuild an eval run's report; compare with another run or the paper")
    p.add_argument("run_dir", help="a run folder of codelm eval, or a folder of run folders")
    p.add_argument("--compare", default=None, help="another run (folder) or 'paper'")
    p.add_argument("--paper-model", default="Code Llama 7B", help="the paper's row to compare with (default: %(default)s)")
    _add_force(p, "a suite.md, suite.json or multipl_e.png in RUN_DIR")
    p.set_defaults(func=_run_report)


def _run_report(args):
    from codelm.evaluate.report import report_main

    print(report_main(args.run_dir, compare=args.compare, paper_model=args.paper_model, force=args.force))
    return 0


# ------------------------------------------------------------------- export
def _add_export(sub):
    p = sub.add_parser("export", help="export a checkpoint for other engines: GGUF (llama.cpp, Ollama) or HF (vLLM)")
    p.add_argument("--format", required=True, choices=["gguf", "hf"],
                   help="gguf: one file for llama.cpp and Ollama; hf: a Hugging Face folder for vLLM and transformers")
    p.add_argument("model", help="checkpoint directory (HF or Meta layout)")
    p.add_argument("out", help="the .gguf file, or the HF folder")
    _add_force(p, "OUT")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16", "q8_0"],
                   help="weights' dtype (GGUF: float32, float16 or q8_0; HF: float32, float16 or bfloat16; "
                        "default float32 / as stored)")
    p.add_argument("--name", default=None, help="model name in the GGUF metadata (default: the folder's name)")
    p.set_defaults(func=_run_export)


def _run_export(args):
    from codelm.export import export_main

    out = export_main(**_settings(args))
    if args.format == "hf":
        print(f"exported {args.model} -> {args.out} (Hugging Face layout: "
              f"python -m vllm.entrypoints.openai.api_server --model {args.out})")
    else:
        print(f"exported {args.model} -> {args.out} (GGUF, {out.stat().st_size / 1e6:.1f} MB)")
    return 0


# ---------------------------------------------------------------------- lab
def _add_lab(sub):
    p = sub.add_parser("lab", help="experiments: `lab length` (train short, test long), `lab longctx` (evaluate a model)")
    labs = p.add_subparsers(dest="experiment", required=True)
    from codelm.lab.length_config import LabLengthConfig

    ln = labs.add_parser("length", help="RoPE, θ, LCFT, position interpolation and ALiBi compared by context length")
    _add_config_flags(ln, LabLengthConfig)
    lc = labs.add_parser("longctx", help="perplexity by context length and key retrieval of a checkpoint")
    lc.add_argument("--model", required=True, help="checkpoint directory (HF or Meta layout)")
    lc.add_argument("--corpus", required=True, help="corpus folder (its held-out split) or a JSONL file with text")
    lc.add_argument("--split", default="valid", help="which split of the corpus folder (default: valid)")
    lc.add_argument("--benchmark", default="all", choices=["perplexity", "key-retrieval", "all"],
                    help="what to measure (default: %(default)s)")
    lc.add_argument("--lengths", default=None, help="e.g. 'L/4,L,4L,16L' or '4096,16384' (L = the model's length)")
    lc.add_argument("--trained-length", type=POSITIVE_INT, default=None, help="L (default: the config's max_seq_len)")
    lc.add_argument("--positions", default=None, help="key positions, e.g. 0,0.2,0.4 (the paper's, the default)")
    lc.add_argument("--sweep-length", type=POSITIVE_INT, default=None, help="length of the position sweep (default: the longest)")
    lc.add_argument("--examples", type=POSITIVE_INT, default=64,
                    help="key-retrieval prompts per length and position (default: %(default)s)")
    lc.add_argument("--eval-tokens", type=POSITIVE_INT, default=65536,
                    help="held-out tokens scored at every length (default: %(default)s)")
    lc.add_argument("--rope-theta", type=POSITIVE_FLOAT, default=None, help="evaluate with this RoPE base instead")
    lc.add_argument("--seed", type=SEED, default=0, help="seed of the prompts (default: %(default)s)")
    lc.add_argument("--threads", type=POSITIVE_INT, default=None, help="torch CPU threads (default: torch's)")
    lc.add_argument("--out", default=None, help="write the results to this JSON file")
    p.set_defaults(func=_run_lab)


def _run_lab(args):
    if args.experiment == "length":
        from codelm.lab.length import lab_main
        from codelm.lab.length_config import LabLengthConfig

        return lab_main(_config_from(args, LabLengthConfig))
    from codelm.evaluate.longctx import longctx_main

    return longctx_main(**_settings(args))


# -------------------------------------------------------------- selfinstruct
def _add_selfinstruct(sub):
    p = sub.add_parser("selfinstruct", help="make question/tests/solution triplets with models, kept by execution")
    p.add_argument("--out", required=True, help="run folder (resumed when it exists)")
    _add_force(p, "--out")
    p.add_argument("--model", default=None, help="checkpoint directory or server URL for every stage")
    p.add_argument("--backend", default="native", choices=["native", "hf", "openai"],
                   help="how every stage generates (default: %(default)s)")
    p.add_argument("--served-model", default=None, help="openai backend: model name (default: the server's first)")
    for stage in ("questions", "tests", "solutions"):
        p.add_argument(f"--{stage}-model", default=None, help=f"model of the {stage} stage (default: --model)")
        p.add_argument(f"--{stage}-backend", default=None, choices=["native", "hf", "openai"],
                       help=f"backend of the {stage} stage (default: --backend)")
        p.add_argument(f"--{stage}-served-model", default=None,
                       help=f"openai backend: model name of the {stage} stage (default: --served-model)")
    p.add_argument("--chat", action="store_true", help="openai backends: ask through /v1/chat/completions")
    p.add_argument("--api-key", default=None, help="openai backend (default: $OPENAI_API_KEY)")
    p.add_argument("--question-prompts", type=POSITIVE_INT, default=4,
                   help="question prompts sent, 50 questions asked each (default: %(default)s)")
    p.add_argument("--max-questions", type=POSITIVE_INT, default=None, help="use only the first N unique questions")
    p.add_argument("--questions-file", default=None, help="skip stage 1: questions from this file, one per line")
    p.add_argument("--tests", type=POSITIVE_INT, default=5, help="unit tests kept per question (default: %(default)s)")
    p.add_argument("--solutions", type=POSITIVE_INT, default=10,
                   help="solutions sampled per question (default: %(default)s)")
    p.add_argument("--temperature", type=NONNEG_FLOAT, default=None, help="questions and solutions (default 0.8)")
    p.add_argument("--seed", type=SEED, default=0, help="sampling seed (default: %(default)s)")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=None, help="generations per batch (default: the backend's)")
    p.add_argument("--workers", type=POSITIVE_INT, default=None, help="sandbox workers (default: CPU count)")
    p.add_argument("--sandbox", default="auto", choices=["auto", "none", "rlimits", "namespaces"],
                   help="isolation of the executed solutions (default: auto, the strongest available)")
    p.add_argument("--timeout", type=POSITIVE_FLOAT, default=5.0,
                   help="CPU seconds per solution run (default: %(default)s)")
    p.set_defaults(func=_run_selfinstruct)


def _run_selfinstruct(args):
    from pathlib import Path

    from codelm.selfinstruct import selfinstruct_main

    summary = selfinstruct_main(**_settings(args))
    y = summary["yield"]
    q = summary["questions"]
    print(f"selfinstruct: {q['generated']} questions generated, {q['duplicates']} duplicates dropped, "
          f"{y['questions']} used; {y['with_tests']} with tests ({summary['tests']['tests_parsed']} tests parsed); "
          f"{summary['solutions']['generated']} solutions, {summary['execution']['solutions_run']} run; "
          f"{y['kept']} kept -> {Path(args.out) / 'selfinstruct.jsonl'}, {Path(args.out) / 'dialogs.jsonl'}")
    return 0


# --------------------------------------------------------------------- chat
def _add_chat(sub):
    p = sub.add_parser("chat", help="chat with an instruct model in the terminal")
    p.add_argument("--model", default=None, help="checkpoint directory (run here)")
    p.add_argument("--url", default=None, help="or an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--served-model", default=None, help="--url: model name (default: the server's first)")
    p.add_argument("--api-key", default=None, help="--url (default: $OPENAI_API_KEY)")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--max-new-tokens", type=POSITIVE_INT, default=512,
                   help="most tokens per answer (default: %(default)s)")
    p.add_argument("--temperature", type=NONNEG_FLOAT, default=0.2, help="0 means greedy (default: %(default)s)")
    p.add_argument("--top-p", type=PROBABILITY, default=0.95, help="nucleus sampling mass (default: %(default)s)")
    p.add_argument("--seed", type=SEED, default=None, help="random seed for sampling (default: none, random)")
    p.add_argument("--no-stream", action="store_true", help="print each answer when it is complete")
    p.add_argument("--device", default=None, help="--model: cpu, cuda (default: cuda if present)")
    _add_engine_flags(p, batch=False)
    p.set_defaults(func=_run_chat)


def _run_chat(args):
    from codelm.chat import chat_main

    return chat_main(stream=not args.no_stream, engine=_engine(args), **_settings(args, "no_stream", *_ENGINE_FLAGS))


COMMANDS = [_add_info, _add_convert, _add_complete, _add_infill, _add_score, _add_train, _add_corpus, _add_demo, _add_serve, _add_eval, _add_report, _add_export, _add_lab, _add_selfinstruct, _add_chat]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="codelm", description="Code Llama end to end.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv=None) -> int:
    import codelm.errors

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # named by the subcommand, as every other error of that command
        parser.exit(2, f"codelm {args.command}: error: unrecognized arguments: {' '.join(extra)}\n")
    codelm.errors.COMMAND = f"codelm {args.command}"
    try:
        rc = args.func(args)
    except CodelmError as e:
        # Bad input is the user's to fix: one clear line, no traceback.
        print(f"codelm {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`codelm complete ... | head`): stop quietly, as other Unix tools do.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    except (ValueError, TypeError, OSError, ZeroDivisionError) as e:
        # A value the edge checks missed, or a file the system refused: still one line, not a traceback
        # (CODELM_TRACEBACK=1 shows the traceback, for reporting a bug).
        if os.environ.get("CODELM_TRACEBACK"):
            raise
        print(f"codelm {args.command}: error: {_one_line(e)} ({type(e).__name__}; set CODELM_TRACEBACK=1 for "
              "the traceback)", file=sys.stderr)
        return 2
    return int(rc or 0)


def _one_line(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return " ".join(text.split()) if "\n" in text else text


if __name__ == "__main__":
    sys.exit(main())
