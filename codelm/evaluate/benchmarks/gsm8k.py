"""GSM8K (Cobbe et al. 2021): grade-school maths word problems, scored by solve rate.

The paper reports GSM8K (Table 12) without saying how it prompted. Two methods are offered:

  gsm8k      8-shot chain of thought. Shots: the first 8 problems of the *train* split, their worked
             answers with the calculator annotations <<...>> removed and the final "#### N" written as
             "The answer is N." The model's answer is the number after its last "The answer is",
             else the last number it wrote.
  gsm8k-pal  program-aided (Gao et al. 2022): 3 hand-written Python shots (train problems 1-3) each a
             `def solution():` returning the answer; the generated function runs in the sandbox and
             its return value is the answer.

An answer is correct when it equals the reference number (to 1e-6). Data: test.jsonl and train.jsonl
of openai/grade-school-math at commit 3101c7d5, in DATA_DIR/gsm8k/ or $CODELM_DATA_DIR/gsm8k/,
checked against pinned sha256 sums.
"""
from __future__ import annotations

import re
import sys

from codelm.benchdata.problems import load_gsm8k as load
from codelm.evaluate import scoring
from codelm.evaluate.sandbox import CommandJob, CommandStep, Limits
from codelm.evaluate.scoring import ScoreOptions, ScoringPlan
from codelm.evaluate.task import Task, cut

COT_SHOTS = 8
COT_STOP = ("\n\nQuestion:", "\nQuestion:")
PAL_STOP = ("\n\n\n", "\n# Question:", "\nQuestion:")
NAMES = ("gsm8k", "gsm8k-pal")

# Programs for train problems 1-3 (Natalia's clips, Weng's babysitting, Betty's wallet), written for
# this prompt: variables named after the quantities, the answer returned.
PAL_SHOTS = (
    ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many "
     "clips did Natalia sell altogether in April and May?",
     "def solution():\n    clips_april = 48\n    clips_may = clips_april / 2\n    return clips_april + clips_may\n"),
    ("Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did "
     "she earn?",
     "def solution():\n    hourly_rate = 12\n    minutes = 50\n    return hourly_rate / 60 * minutes\n"),
    ("Betty is saving money for a new wallet which costs $100. Betty has only half of the money she needs. Her "
     "parents decided to give her $15 for that purpose, and her grandparents twice as much as her parents. How "
     "much more money does Betty need to buy the wallet?",
     "def solution():\n    wallet = 100\n    betty = wallet / 2\n    parents = 15\n    grandparents = 2 * parents\n"
     "    return wallet - betty - parents - grandparents\n"),
)


def _clean_reasoning(text: str) -> str:
    return re.sub(r"<<[^>]*>>", "", text).strip()


def cot_shot(problem: dict) -> str:
    return (f"Question: {problem['question']}\nAnswer: {_clean_reasoning(problem['reasoning'])} "
            f"The answer is {problem['expected']}.")


def cot_prompt(shots: list[dict], question: str) -> str:
    return "\n\n".join(cot_shot(s) for s in shots) + f"\n\nQuestion: {question}\nAnswer:"


def pal_prompt(question: str) -> str:
    shots = "\n\n".join(f"# Question: {q}\n{code}" for q, code in PAL_SHOTS)
    return f"{shots}\n\n# Question: {question}\ndef solution():\n"


def cot_tasks(data_dir=None):
    shots = load("train", data_dir)[:COT_SHOTS]
    return [Task(p["task_id"], cot_prompt(shots, p["question"]), stop=COT_STOP, meta={"expected": p["expected"]})
            for p in load("test", data_dir)]


def pal_tasks(data_dir=None):
    return [Task(p["task_id"], pal_prompt(p["question"]), stop=PAL_STOP, meta={"expected": p["expected"]})
            for p in load("test", data_dir)]


def cot_postprocess(task, text: str) -> str:
    return cut(text, COT_STOP).strip()


def pal_postprocess(task, text: str) -> str:
    # The prompt ends inside `def solution():`; the completion is that function, whole.
    return "def solution():\n" + cut(text, PAL_STOP).rstrip() + "\n"


_NUMBER = r"-?\$?\s*-?[0-9][0-9,]*(?:\.[0-9]+)?"


def extract_answer(text: str) -> str | None:
    """The number after the last "The answer is", else the last number in the text (commas, $ dropped)."""
    found = re.findall(r"[Tt]he answer is:?\s*(" + _NUMBER + ")", text)
    if not found:
        found = re.findall(_NUMBER, text)
    if not found:
        return None
    return found[-1].replace(",", "").replace("$", "").replace(" ", "").rstrip(".")


def same_number(got, expected: str) -> bool:
    try:
        return abs(float(got) - float(expected)) < 1e-6
    except (TypeError, ValueError):
        return False


PAL_MAIN = "\n\nif __name__ == '__main__':\n    print(repr(solution()))\n"


def pal_job(code: str) -> CommandJob:
    """Run a program defining solution() in the sandbox; it prints the answer's repr."""
    return CommandJob(steps=[CommandStep([sys.executable, "-I", "solution.py"],
                                         Limits(cpu_seconds=5, wall_seconds=20, output_bytes=4096))],
                      files={"solution.py": {"text": code + PAL_MAIN}})


def pal_answer(results) -> tuple[str | None, str]:
    """(printed answer or None, how it went) of a pal_job's step results."""
    r = results[0]
    if r.status != "ok":
        return None, "timed out" if r.timed_out else f"failed: {r.reason}"
    lines = r.stdout.strip().splitlines()
    return (lines[-1] if lines else None), "ran"


def load_problems(benchmark: str = "gsm8k", data_dir=None) -> list[dict]:
    """The test split's problems (gsm8k and gsm8k-pal score the same problems)."""
    return load("test", data_dir)


def plan(benchmark: str, options: ScoreOptions) -> "Gsm8kPlan":
    if benchmark == "gsm8k-pal":
        return PalPlan(benchmark, options)
    return Gsm8kPlan(benchmark, options)


def score(benchmark: str, samples, out=None, options: ScoreOptions = ScoreOptions(ks=(1,))) -> dict:
    """Score a samples JSONL (task_id "gsm8k/N", completion): writes results and a summary like `codelm score`."""
    return scoring.score(plan(benchmark, options), samples, out, options)


def graded(answer, how: str, expected: str) -> dict:
    ok = same_number(answer, expected)
    reason = "passed" if ok else (how if how not in ("ran", "extracted") else
                                  f"failed: answer {answer!r}, expected {expected}")
    return {"answer": answer, "expected": expected, "passed": ok, "result": reason}


class Gsm8kPlan(ScoringPlan):
    """Chain of thought: the answer is read from the text, nothing runs."""

    def __init__(self, benchmark: str, options: ScoreOptions):
        self.name = benchmark
        self.problems = {p["task_id"]: p for p in load_problems(benchmark, options.data_dir)}

    def judge(self, problem: dict, sample: dict) -> dict:
        return graded(extract_answer(sample["completion"]), "extracted", problem["expected"])

    def summary_fields(self, rows: list[dict], ks) -> dict:
        return {"solve_rate": sum(r["passed"] for r in rows) / len(rows)}


class PalPlan(Gsm8kPlan):
    """Program-aided: the generated solution() runs in the sandbox, its printed value is the answer."""

    calibrated = False  # pal_job's own limits
    rerun_timeouts = False
    judge = None

    def sample_job(self, problem: dict, sample: dict) -> CommandJob:
        return pal_job(sample["completion"])

    def row_fields(self, results, problem: dict) -> dict:
        return graded(*pal_answer(results), problem["expected"])
