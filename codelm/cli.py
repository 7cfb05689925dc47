"""The `codelm` command. Thin: it parses arguments and calls the library.

Each subcommand has one `_add_<name>` function that declares its arguments and
a handler that imports the library lazily (so `codelm --help` stays fast).
"""
from __future__ import annotations

import argparse
import sys

from codelm.errors import CodelmError


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
    p.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard, e.g. 2GB or 500MB")
    p.set_defaults(func=_run_convert)


def _run_convert(args):
    from codelm.model.checkpoint import convert_main

    return convert_main(args.src, args.dst, dtype=args.dtype, max_shard_size=args.max_shard_size)


# ------------------------------------------------------- complete / infill
def _add_sampling_args(p):
    p.add_argument("--model", required=True, help="checkpoint directory (HF or Meta layout)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 means greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=None, help="stop sequence (repeatable)")
    p.add_argument("--no-stream", action="store_true", help="print the result at the end instead of streaming")


def _add_complete(sub):
    p = sub.add_parser("complete", help="continue a prompt")
    _add_sampling_args(p)
    p.add_argument("prompt", help="the prompt text, or @FILE to read it from a file")
    p.set_defaults(func=_run_complete)


def _run_complete(args):
    from codelm.generate.cli import complete_main

    return complete_main(args)


def _add_infill(sub):
    p = sub.add_parser("infill", help="fill in the middle between a prefix and a suffix")
    _add_sampling_args(p)
    p.add_argument("--prefix", default=None)
    p.add_argument("--suffix", default=None)
    p.add_argument("--file", default=None, help="a file with one <FILL> marker: text before is the prefix, after the suffix")
    p.add_argument("--spm", action="store_true", help="suffix-prefix-middle layout instead of PSM")
    p.set_defaults(func=_run_infill)


def _run_infill(args):
    from codelm.generate.cli import infill_main

    return infill_main(args)


# -------------------------------------------------------------------- score
def _add_score(sub):
    p = sub.add_parser("score", help="execute samples against a benchmark's tests in the sandbox and report pass@k")
    p.add_argument("--benchmark", required=True,
                   help="humaneval, humaneval+, mbpp, mbpp+, humaneval-infilling-single-line, ...")
    p.add_argument("--samples", required=True, help="JSONL with task_id and completion per line")
    p.add_argument("--out", default=None, help="results JSONL (default: SAMPLES with _results.jsonl)")
    p.add_argument("--workers", type=int, default=None, help="parallel workers (default: CPU count)")
    p.add_argument("--timeout", type=float, default=None, help="floor of the per-task time limit in seconds")
    p.add_argument("--sandbox", default="auto", choices=["auto", "none", "rlimits", "namespaces"])
    p.add_argument("--data-dir", default=None, help="benchmark data folder (default: $CODELM_DATA_DIR or the download cache)")
    p.add_argument("--k", default="1,10,100", help="comma-separated k for pass@k (only k <= n are reported)")
    p.add_argument("--resume", action="store_true", help="continue a killed run, keeping finished rows")
    p.set_defaults(func=_run_score)


def _run_score(args):
    from codelm.evaluate.runner import score_main

    return score_main(args)


# -------------------------------------------------------------------- train
def _add_train(sub):
    p = sub.add_parser("train", help="run a training recipe (code pretraining, LCFT, instruct)")
    p.add_argument("recipe", help="a recipe TOML file (see recipes/)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the run folder")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set train.max_steps=100 (repeatable)")
    p.set_defaults(func=_run_train)


def _run_train(args):
    from codelm.train.loop import train_main

    return train_main(args.recipe, resume=args.resume, overrides=args.set)


# ------------------------------------------------------------------- corpus
def _add_corpus(sub):
    p = sub.add_parser("corpus", help="build a deduplicated, decontaminated code corpus")
    p.add_argument("--source", action="append", default=None,
                   help="folder or git repository to collect (repeatable; default: the Python standard library)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--data-dir", default=None, help="benchmark data for decontamination (default: $CODELM_DATA_DIR)")
    p.add_argument("--valid-fraction", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--languages", default=None, help="comma-separated languages to keep, e.g. python,c (default: all)")
    p.add_argument("--exclude", action="append", default=None, metavar="GLOB",
                   help="leave out paths matching GLOB inside a source, e.g. 'test/*' (repeatable)")
    p.add_argument("--max-file-bytes", type=int, default=None, help="largest file kept (default 1000000)")
    p.set_defaults(func=_run_corpus)


def _run_corpus(args):
    from codelm.data.corpus import corpus_main

    return corpus_main(args)


# --------------------------------------------------------------------- demo
def _add_demo(sub):
    p = sub.add_parser("demo", help="the miniature Code Llama pipeline, end to end on CPU")
    p.add_argument("--out", default="demo-out", help="output folder")
    p.add_argument("--quick", action="store_true", help="a much shorter run (for tests)")
    p.set_defaults(func=_run_demo)


def _run_demo(args):
    from codelm.demo import demo_main

    return demo_main(args)


COMMANDS = [_add_info, _add_convert, _add_complete, _add_infill, _add_score, _add_train, _add_corpus, _add_demo]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="codelm", description="Code Llama end to end.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc = args.func(args)
    except CodelmError as e:
        # Bad input is the user's to fix: one clear line, no traceback.
        print(f"codelm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
