"""The paper's evaluation protocols written down as code: prompts, stop sequences, post-processing.

Every protocol turns a benchmark's problems into `Task`s (the prompt, or the infilling prefix and
suffix, plus stop sequences) and a generation back into the string the scorer runs. Sources of each
choice (reference doc §5.1 unless said otherwise):

humaneval, humaneval+  zero-shot; the prompt is the problem's prompt with surrounding whitespace
    stripped and generations cut at the BigCode harness's HumanEval stop words (Code Llama's authors
    say they truncated "as in the BigCode harness HumanEval task", meta-llama/codellama#72).
    pass@1 greedy; pass@10/100 at T=0.8, top-p 0.95, n=200 (App. C).
mbpp, mbpp+  3-shot: the Austin et al. prompt-split tasks 2, 3 and 4 as shots, each as
    "You are an expert Python programmer, and here is your task: {text} Your code should pass these
    tests:\\n\\n{three asserts}\\n[BEGIN]\\n{code}\\n[DONE]", shots joined by a blank line, the query
    ending in "[BEGIN]\\n"; the generation is cut at "[DONE]" and is the whole program. Only tasks
    11-510 (the MBPP test split) are evaluated for mbpp; mbpp+ evaluates all its 378 tasks (the
    shots 2, 3, 4 are among them, as in any few-shot MBPP+ run).
humaneval-infilling-*  PSM (default) or SPM (name ending in -spm), greedy, generation until EOT;
    single-line middles are one line, so a single-line generation is cut after its first newline.
multipl-e-LANG  zero-shot greedy on MultiPL-E's "reworded" HumanEval translations, cut at the
    problem's own stop tokens (MultiPL-E's convention: prompt not stripped, program = prompt +
    completion + "\\n" + tests).
gsm8k  the paper names no method; here: 8-shot chain of thought with the first 8 GSM8K *train*
    problems as shots (their calculator annotations <<...>> removed, the final "#### N" written as
    "The answer is N."), answer = the number after the last "The answer is", else the last number.
mbpp-instruct  zero-shot MBPP for instruct models (the self-instruct ablation, Table 8; Fig. 13
    prompt): "[INST] You are an expert Python programmer, and here is your task: {text} Your code
    should pass these tests:\\n\\n{three asserts}\\nYour code should start with a [PYTHON] tag and end
    with a [/PYTHON] tag. [/INST]"; the program is the first [PYTHON] block of the answer. With a
    chat backend the text inside [INST] ... [/INST] is sent as the user's message.
gsm8k-pal  program-aided: 3 hand-written Python `solution()` shots for train problems 1-3; the
    generated function runs in the sandbox and its return value is the answer.
apps, apps-introductory|interview|competition  2-shot, T=0.6, top-p 0.95, pass@5/10/100 (§3.1,
    Table 3); prompt, stops and scoring in codelm/evaluate/benchmarks/apps.py.
ds1000  not in the paper: DS-1000's own prompt, stops and post-processing (benchmarks/ds1000.py).
lcc-LANG, lcc-LANG-4k  single-line completion scored by exact match, edit similarity and BLEU
    (§3.3, Table 7); -4k keeps the last 4,000 tokens of the context (benchmarks/lcc.py).
"""
from __future__ import annotations

from codelm.errors import CodelmError, DataError
from codelm.evaluate.benchmarks import gsm8k, load_problems, multipl_e
from codelm.evaluate.scorers import SCORERS
from codelm.evaluate.task import PYTHON_TAGS, Protocol, Task, cut, extract_code  # noqa: F401 - re-exported

# BigCode harness, HumanEval task: the model has finished the function once it starts a new
# top-level statement (class, def, comment, decorator, print, if) or closes a markdown block.
HUMANEVAL_STOP = ("\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```")
MBPP_SHOTS = (2, 3, 4)
MBPP_TEST_SPLIT = range(11, 511)
MBPP_STOP = ("[DONE]",)
INFILLING_SETS = ("single-line", "multi-line", "random-span", "random-span-light")


# ----------------------------------------------------------------------------- HumanEval
def humaneval_prompt(problem: dict) -> str:
    return problem["prompt"].strip()


def _humaneval_tasks(name):
    def load(data_dir):
        return [Task(p["task_id"], humaneval_prompt(p), stop=HUMANEVAL_STOP) for p in load_problems(name, data_dir)]
    return load


def humaneval_post(task: Task, text: str) -> str:
    # The scorer runs problem["prompt"] + completion; the model saw the stripped prompt, so the
    # completion starts with the newline after the docstring (a blank line more: harmless).
    return cut(text, HUMANEVAL_STOP)


# ----------------------------------------------------------------------------- MBPP
def _mbpp_rows(data_dir) -> dict[int, dict]:
    return {p["mbpp_id"]: p for p in load_problems("mbpp", data_dir)}


def _mbpp_block(text: str, tests: list[str]) -> str:
    return ("You are an expert Python programmer, and here is your task: " + text
            + " Your code should pass these tests:\n\n" + "\n".join(tests) + "\n[BEGIN]\n")


def _normalise_code(code: str) -> str:
    # MBPP's reference code has Windows line ends; the model's own output will use "\n".
    return code.replace("\r\n", "\n").rstrip()


def mbpp_shots(rows: dict[int, dict]) -> str:
    return "\n\n".join(_mbpp_block(rows[i]["text"], rows[i]["test_list"]) + _normalise_code(rows[i]["code"])
                       + "\n[DONE]" for i in MBPP_SHOTS) + "\n\n"


def mbpp_prompt(rows: dict[int, dict], number: int) -> str:
    row = rows[number]
    return mbpp_shots(rows) + _mbpp_block(row["text"], row["test_list"])


def _mbpp_tasks(plus: bool):
    def load(data_dir):
        rows = _mbpp_rows(data_dir)
        if plus:
            numbers = [p["mbpp_id"] for p in load_problems("mbpp+", data_dir)]
            missing = [n for n in numbers if n not in rows]
            if missing:
                raise DataError(f"MBPP+ task(s) {missing[:5]} are not in mbpp.jsonl: cannot build their prompts")
        else:
            numbers = [n for n in MBPP_TEST_SPLIT if n in rows]
        return [Task(f"Mbpp/{n}", mbpp_prompt(rows, n), stop=MBPP_STOP) for n in numbers]
    return load


def mbpp_post(task: Task, text: str) -> str:
    # The answer is the program between [BEGIN] and [DONE]; a model that goes on to write the
    # next shot's header is cut there too.
    return cut(text, MBPP_STOP + ("\nYou are an expert Python programmer",)).strip("\n") + "\n"


def mbpp_instruct_message(row: dict) -> str:
    return ("You are an expert Python programmer, and here is your task: " + row["text"]
            + " Your code should pass these tests:\n\n" + "\n".join(row["test_list"])
            + "\nYour code should start with a [PYTHON] tag and end with a [/PYTHON] tag.")


def _mbpp_instruct_tasks(data_dir):
    rows = _mbpp_rows(data_dir)
    tasks = []
    for n in MBPP_TEST_SPLIT:
        if n in rows:
            message = mbpp_instruct_message(rows[n])
            # A completion backend gets the [INST] layout as text: encoded with BOS it is the same
            # token sequence as the one-turn chat prompt.
            tasks.append(Task(f"Mbpp/{n}", f"[INST] {message.strip()} [/INST]", stop=("[INST]",),
                              meta={"chat_message": message}))
    return tasks


def mbpp_instruct_post(task: Task, text: str) -> str:
    code = PYTHON_TAGS.search(text)
    return (code.group(1).strip("\n") + "\n") if code else text


# ----------------------------------------------------------------------------- infilling
def _infilling_tasks(which: str):
    def load(data_dir):
        return [Task(p["task_id"], p["prompt"], suffix=p["suffix"])
                for p in load_problems(f"humaneval-infilling-{which}", data_dir)]
    return load


def single_line_post(task: Task, text: str) -> str:
    # The missing middle is exactly one line (its newline included): what follows the first
    # newline would duplicate the suffix.
    i = text.find("\n")
    return text if i < 0 else text[:i + 1]


def identity_post(task: Task, text: str) -> str:
    return text


# ----------------------------------------------------------------------------- registry
def _protocols() -> dict[str, Protocol]:
    p = {
        "humaneval": Protocol("humaneval", "humaneval", "humaneval", _humaneval_tasks("humaneval"), humaneval_post,
                              paper="Table 2"),
        "humaneval+": Protocol("humaneval+", "humaneval+", "evalplus", _humaneval_tasks("humaneval+"), humaneval_post),
        "mbpp": Protocol("mbpp", "mbpp", "mbpp", _mbpp_tasks(False), mbpp_post, paper="Table 2"),
        "mbpp+": Protocol("mbpp+", "mbpp+", "evalplus", _mbpp_tasks(True), mbpp_post, sample_field="solution"),
        "mbpp-instruct": Protocol("mbpp-instruct", "mbpp", "mbpp", _mbpp_instruct_tasks, mbpp_instruct_post,
                                  paper="Table 8 (MBPP zero-shot)"),
    }
    for which in INFILLING_SETS:
        bench = f"humaneval-infilling-{which}"
        post = single_line_post if which == "single-line" else identity_post
        tokens = 128 if which == "single-line" else 256
        for spm in (False, True):
            name = bench + ("-spm" if spm else "")
            p[name] = Protocol(name, bench, "humaneval", _infilling_tasks(which), post, spm=spm, max_new_tokens=tokens,
                               paper="Table 14")
    for lang in multipl_e.LANGUAGES:
        name = f"multipl-e-{lang}"
        p[name] = Protocol(name, name, "multipl-e", multipl_e.task_loader(lang), multipl_e.postprocess,
                           paper="Table 4")
    p["gsm8k"] = Protocol("gsm8k", "gsm8k", "gsm8k", gsm8k.cot_tasks, gsm8k.cot_postprocess, max_new_tokens=256,
                          sample_field="completion", paper="Table 12")
    p["gsm8k-pal"] = Protocol("gsm8k-pal", "gsm8k-pal", "gsm8k", gsm8k.pal_tasks, gsm8k.pal_postprocess,
                              max_new_tokens=256, paper="Table 12 (method not given in the paper)")
    for module in SCORERS.values():  # benchmarks that write their own protocols (APPS, DS-1000, LCC)
        if hasattr(module, "protocols"):
            p.update(module.protocols())
    return p


def protocol_names() -> list[str]:
    return list(_protocols())


def get_protocol(name: str) -> Protocol:
    table = _protocols()
    key = name.strip().lower()
    if key not in table:
        raise CodelmError(f"unknown benchmark {name!r}; valid names: {', '.join(table)}")
    return table[key]
