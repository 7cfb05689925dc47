"""The settings of one `codelm eval` run, declared once: `run_eval` takes an EvalConfig, and the command
line builds its flags from these fields (help, checks and defaults in each field's metadata), so a
setting cannot exist in one place and not the other. Kept free of heavy imports: `codelm --help`
reads it."""
from __future__ import annotations

from dataclasses import dataclass, field


def flag(default=None, help: str = "", kind: str | None = None, choices=None, cli: bool = True):
    """A field with its command-line flag: `kind` names the check of its value (positive_int, nonneg_float,
    positive_float, probability, seed), `choices` the values allowed; `cli=False` keeps it off the command line."""
    return field(default=default, metadata={"help": help, "kind": kind, "choices": choices, "cli": cli})


@dataclass
class EvalConfig:
    benchmark: str = field(metadata={"help": "humaneval, humaneval+, mbpp, mbpp+, humaneval-infilling-single-line"
                                             "[-spm], ..., multipl-e-LANG, gsm8k, gsm8k-pal, mbpp-instruct, apps[-"
                                             "introductory|-interview|-competition], ds1000, lcc-{python,java,csharp}"
                                             "[-4k]"})
    model: str = field(metadata={"help": "checkpoint directory (native, hf) or server URL (openai)"})
    backend: str = flag("native", "how to generate (default: %(default)s)", choices=("native", "hf", "openai"))
    n: int = flag(1, "samples per task (200 for the paper's pass@10/100; default: %(default)s)", "positive_int")
    temperature: float | None = flag(None, "default: 0 (greedy) if n=1, else the protocol's (0.8; APPS 0.6)",
                                     "nonneg_float")
    top_p: float | None = flag(None, "default: 0.95 when sampling", "probability")
    max_new_tokens: int | None = flag(None, "default: the benchmark protocol's (cut to the model's context with a "
                                            "warning)", "positive_int")
    limit: int | None = flag(None, "only the first K tasks (default: all)", "positive_int")
    out: str | None = flag(None, "run folder (default: eval-runs/BENCHMARK)")
    resume: bool = flag(False, "continue a killed run in --out without regenerating")
    seed: int = flag(0, "sampling seed (default: %(default)s)", "seed")
    batch_size: int | None = flag(None, "generations per batch (native, hf) or per round (openai)", "positive_int")
    data_dir: str | None = flag(None, "benchmark data folder (default: $CODELM_DATA_DIR)")
    workers: int | None = flag(None, "sandbox workers (default: CPU count)", "positive_int")
    sandbox: str = flag("auto", "isolation of the executed code (default: auto, the strongest available)",
                        choices=("auto", "none", "rlimits", "namespaces"))
    timeout: float | None = flag(None, "floor of the per-task time limit in seconds", "positive_float")
    chat: bool = flag(False, "openai backend: use /v1/chat/completions (instruct models)")
    infill: str = flag("suffix", "openai backend: how infilling prompts are sent (tokens: for vLLM, needs "
                                 "--tokenizer; default: %(default)s)", choices=("suffix", "tokens", "llama.cpp"))
    tokenizer: str | None = flag(None, "openai backend: the model's tokenizer folder (--infill tokens)")
    served_model: str | None = flag(None, "openai backend: model name (default: the server's first)")
    api_key: str | None = flag(None, "openai backend (default: $OPENAI_API_KEY)")
    concurrency: int = flag(8, "openai backend: requests in flight (default: %(default)s)", "positive_int")
    device: str | None = flag(None, "native/hf backends: cpu, cuda, cuda:1 (default: cuda if present)")
    dtype: str | None = flag(None, "native/hf backends (default: bfloat16 on a GPU, float32 on a CPU)",
                             choices=("float32", "bfloat16", "float16"))
    quantize: str = flag("none", "native backend: int8 weight-only weights (default: %(default)s)", choices=("none", "int8"))
    progress: bool = flag(True, cli=False)  # bars on stderr (the command line: when stderr is a terminal)
    force: bool = flag(False, "replace --out even when it exists and codelm did not write it (never an input)")
