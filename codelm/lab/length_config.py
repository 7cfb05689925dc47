"""The settings of `codelm lab length`, declared once: `lab_main` takes a LabLengthConfig, and the command
line builds its flags from these fields (help, checks and defaults in each field's metadata, as for
codelm/evaluate/eval_config.py). None means the experiment's default (LabSettings in length.py, or its
--quick variant). Kept free of heavy imports: `codelm --help` reads it."""
from __future__ import annotations

from dataclasses import dataclass, field

from codelm.evaluate.eval_config import flag


def _many(help: str):
    """A repeatable KEY=VALUE flag gathered into a list."""
    return field(default_factory=list, metadata={"help": help, "append": True, "metavar": "KEY=VALUE"})


@dataclass(frozen=True)
class LabLengthConfig:
    out: str = flag("lab-length", "output folder (runs, evaluations, table, plots; resumed when it exists; "
                                  "default: %(default)s)")
    force: bool = flag(False, "replace --out even when it exists and codelm did not write it (never an input)")
    quick: bool = flag(False, "tiny sizes, one seed: a first look in a few minutes")
    seeds: int | None = flag(None, "seeds (default 3; 1 with --quick)", "positive_int")
    only_seed: int | None = flag(None, "train and evaluate this seed only (0 .. seeds-1), e.g. one process per seed "
                                       "once the first has printed 2/4; then the same command without it writes "
                                       "the tables from the finished runs", "seed")
    seq_len: int | None = flag(None, "the training length L (default: the recipe's)", "positive_int")
    lcft_factor: int | None = flag(None, "fine-tune at this multiple of L (default 4, as in the paper's Table 18)",
                                   "positive_int")
    retrieval_examples: int | None = flag(None, "key-retrieval prompts per (length, key position) cell and seed "
                                                "(default 64)", "positive_int")
    retrieval_max_multiple: int | None = flag(None, "key retrieval up to this multiple of L (default 8; perplexity "
                                                    "always goes to 16L)", "positive_int")
    methods: str | None = flag(None, "only these methods, comma-separated (rope, rope-1e6-infer, lcft-1e4, pi-ft, "
                                     "lcft-1e6, alibi; default: all)")
    eval_split: str | None = flag(None, "held-out half to evaluate on: report (the tables) or select (for choosing "
                                        "settings without touching the reported files; default: report)",
                                  choices=("report", "select"))
    sweep_multiple: int | None = flag(None, "run the position sweep at this multiple of L (default 4)", "positive_int")
    eval_tokens: int | None = flag(None, "held-out tokens scored at every length", "positive_int")
    drill_weight: float | None = flag(None, "share of retrieval drills in pretraining", "fraction")
    drill_loss_weight: float | None = flag(None, "how many code tokens one drill answer token counts in the "
                                                 "pretraining loss", "nonneg_float")
    lcft_drill_weight: float | None = flag(None, "share of retrieval drills in the fine-tunes (default 0.9)", "fraction")
    lcft_drill_loss_weight: float | None = flag(None, "how many code tokens one drill answer token counts in the "
                                                      "fine-tunes' loss", "nonneg_float")
    threads: int | None = flag(None, "torch threads for the runs and evaluations (default: one per core; 1 on a "
                                     "busy machine)", "positive_int")
    train_chars: int | None = flag(None, "training text kept from the corpus", "positive_int")
    set: list = _many("override the pretraining recipe (recipes/lab-length.toml), e.g. train.max_steps=600")
    lcft_set: list = _many("override the fine-tune recipe (recipes/lcft-lab.toml)")
