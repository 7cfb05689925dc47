"""What a benchmark hands the generator and takes back: a `Task` (a prompt, or an infilling prefix and
suffix, with stop strings), the `Protocol` that makes tasks and post-processes generations, and the two
text helpers every protocol uses (`cut` at stop strings, `extract_code` from a chat answer). Kept apart
from codelm.evaluate.protocols, the table of all protocols, so that benchmarks import these without
importing the table that imports them."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from codelm.generate.stops import cut  # noqa: F401 - the benchmarks cut generations with it


@dataclass
class Task:
    task_id: str
    prompt: str  # the completion prompt, or the infilling prefix
    suffix: str | None = None
    stop: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict)


@dataclass
class Protocol:
    name: str
    benchmark: str  # the benchmark name its samples are scored as ("mbpp" for mbpp-instruct, "lcc-python" for -4k)
    scorer: str  # the key of its benchmark module in codelm.evaluate.scorers.SCORERS
    load_tasks: Callable[[str | None], list[Task]]
    postprocess: Callable[[Task, str], str]
    spm: bool = False
    max_new_tokens: int = 512
    sample_field: str = "completion"  # the samples-file field the scorer reads
    paper: str = ""  # where the paper reports it
    sample_temperature: float = 0.8  # the default temperature when n > 1 (App. C; APPS: 0.6)
    ks: tuple[int, ...] = (1, 10, 100)  # pass@k reported (those <= n)
    # Called with (tasks, backend) once the backend exists: prompts that depend on the model's
    # tokenizer (LCC's last-4,000-token window) are cut here.
    adapt_tasks: Callable | None = None


CODE_BLOCK = re.compile(r"```[a-zA-Z0-9_+-]*\n(.*?)(?:```|$)", re.S)
PYTHON_TAGS = re.compile(r"\[PYTHON\](.*?)(?:\[/PYTHON\]|$)", re.S)


def extract_code(text: str) -> str:
    """The code of a chat answer: its first ``` block or [PYTHON] ... [/PYTHON] block, else the text."""
    for pattern in (PYTHON_TAGS, CODE_BLOCK):
        m = pattern.search(text)
        if m:
            return m.group(1).strip("\n") + "\n"
    return text
