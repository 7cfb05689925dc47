"""Build a code corpus: collect, filter, deduplicate, decontaminate, split.

(Just over 500 lines: the resumable scan and the corpus-wide stages after it are one pipeline with one
journal; decontamination itself lives in codelm.data.decontam.)

`codelm corpus --out DIR [--source PATH_OR_GIT_URL ...]` writes

    DIR/train.jsonl, DIR/valid.jsonl   one file per line: path (source/relative path), language, bytes,
                                       sha256, text
    DIR/removed.jsonl                  every file left out, with the reason
    DIR/report.json, DIR/report.md     counts: files, bytes, languages, duplicates, contamination

The per-file work (read, filter, MinHash signature, benchmark n-gram matches) is
appended to DIR/.work/scan.jsonl as it happens, so a killed run continues where
it stopped; the corpus-wide stages after it (dedupe, split, write) take seconds.

Near-duplicates are found with MinHash + LSH (datasketch) over 5-grams of code
tokens in which identifiers are replaced by a placeholder (keywords kept), so a
copy with renamed variables has the same shingles as the original.
Decontamination looks for word 10-grams of each benchmark prompt and solution
(HumanEval, HumanEval+, MBPP, MBPP+, the HumanEval-infilling sets, and the
MultiPL-E translations of the prompts when the data folder holds them):
a file is contaminated when it contains at least half of the 10-grams of one
benchmark text (and at least 3 of them). Measured on the Python 3.11 standard
library, the worst unrelated file shares 3 of ~60 10-grams with an MBPP task
(5%), so the rule has a wide margin on both sides.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import keyword
import os
import re
import shutil
import subprocess
import sysconfig
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from tqdm import tqdm

from codelm.data.decontam import BenchmarkIndex, build_benchmark_index, fingerprint_data_dir
from codelm.files import atomic_write_stream, claim_output, iter_jsonl, mark_output
from codelm.errors import ConfigError, DataError

# ----------------------------------------------------------------- languages
EXTENSIONS = {
    ".py": "python", ".pyi": "python", ".pyx": "python",
    ".c": "c", ".h": "c",
    ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".hpp": "cpp", ".hh": "cpp", ".hxx": "cpp",
    ".cs": "c-sharp", ".java": "java", ".kt": "kotlin", ".scala": "scala",
    ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript", ".jsx": "javascript",
    ".ts": "typescript", ".tsx": "typescript",
    ".go": "go", ".rs": "rust", ".rb": "ruby", ".php": "php", ".swift": "swift",
    ".lua": "lua", ".pl": "perl", ".pm": "perl", ".r": "r", ".jl": "julia",
    ".hs": "haskell", ".ml": "ocaml", ".mli": "ocaml", ".ex": "elixir", ".exs": "elixir",
    ".rkt": "racket", ".d": "d", ".dart": "dart", ".f90": "fortran", ".f": "fortran",
    ".sh": "shell", ".bash": "shell", ".zsh": "shell", ".ps1": "powershell", ".bat": "batchfile",
    ".asm": "assembly", ".s": "assembly", ".sql": "sql", ".vb": "visual-basic",
    ".html": "html", ".htm": "html", ".css": "css", ".md": "markdown", ".rst": "restructuredtext",
    ".tex": "tex", ".cmake": "cmake",
}
FILENAMES = {"Makefile": "makefile", "makefile": "makefile", "GNUmakefile": "makefile",
             "Dockerfile": "dockerfile", "CMakeLists.txt": "cmake"}
SHEBANGS = {"python": "python", "python3": "python", "bash": "shell", "sh": "shell", "zsh": "shell",
            "perl": "perl", "ruby": "ruby", "node": "javascript", "lua": "lua"}
# Folders that never hold the user's own source: caches, vendored environments, VCS data.
SKIP_DIRS = {".git", ".hg", ".svn", "__pycache__", "node_modules", "site-packages", "dist-packages",
             ".venv", "venv", ".tox", ".mypy_cache", ".pytest_cache"}


def detect_language(path: str | Path, head: str = "") -> str | None:
    """Language of a file from its name, else from a `#!` line; None if not code we know."""
    p = Path(path)
    if p.name in FILENAMES:
        return FILENAMES[p.name]
    lang = EXTENSIONS.get(p.suffix.lower()) if p.suffix else None
    if lang:
        return lang
    if head.startswith("#!"):
        words = head[2:].split("\n", 1)[0].replace("/", " ").split()
        if words and words[-1] == "env" and len(words) == 1:
            return None
        for w in (words[-1:] + words[:-1]) if words else []:
            name = re.sub(r"[\d.]+$", "", w)
            if name in SHEBANGS:
                return SHEBANGS[name]
    return None


# ------------------------------------------------------------------- options
@dataclass
class CorpusOptions:
    languages: list[str] | None = None      # None: every language in EXTENSIONS
    exclude: list[str] = field(default_factory=list)  # glob patterns on the path inside a source
    min_bytes: int = 64
    max_bytes: int = 1_000_000
    max_line_length: int = 1000
    max_mean_line_length: float = 100.0
    min_alnum_fraction: float = 0.25
    near_dup_threshold: float = 0.8
    shingle_size: int = 5
    num_perm: int = 128
    decontam_ngram: int = 10
    decontam_min_matches: int = 3
    decontam_min_fraction: float = 0.5
    valid_fraction: float = 0.02
    seed: int = 0

    def check(self) -> None:
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ConfigError(f"corpus: valid_fraction must be in [0, 1), got {self.valid_fraction}")
        if not 0.0 < self.near_dup_threshold <= 1.0:
            raise ConfigError(f"corpus: near_dup_threshold must be in (0, 1], got {self.near_dup_threshold}")
        if self.languages is not None:
            known = set(EXTENSIONS.values()) | set(FILENAMES.values())
            bad = [x for x in self.languages if x not in known]
            if bad:
                raise ConfigError(f"corpus: unknown language(s) {bad}; known: {sorted(known)}")


# ------------------------------------------------------------------- sources
def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


# The standard library's test suites (odd code on purpose) and the packages' vendored test data, left out
# of the corpora that the demo and the length lab train on.
STDLIB_TEST_EXCLUDE = ["test/*", "*/test/*", "*/tests/*", "idlelib/idle_test/*", "lib2to3/tests/*"]


def _is_git_url(s: str) -> bool:
    return bool(re.match(r"^(https?|ssh|git|file)://", s)) or bool(re.match(r"^[\w.-]+@[\w.-]+:", s))


@dataclass
class Source:
    name: str      # the prefix of every path collected from it
    root: Path
    git: bool      # list tracked files with `git ls-files` instead of walking


def resolve_sources(sources: list[str] | None, work_dir: Path) -> list[Source]:
    """Folders as given; git URLs cloned (shallow) into work_dir/repos; default: the stdlib."""
    if not sources:
        return [Source("stdlib", stdlib_dir(), git=False)]
    out: list[Source] = []
    names: Counter = Counter()
    for s in sources:
        if _is_git_url(s):
            base = re.sub(r"\.git$", "", s.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]) or "repo"
            dest = work_dir / "repos" / base
            if not (dest / ".git").is_dir():
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(dest.name + ".partial")
                if tmp.exists():
                    _rmtree(tmp)
                r = subprocess.run(["git", "clone", "--depth", "1", "--quiet", s, str(tmp)],
                                   capture_output=True, text=True)
                if r.returncode != 0:
                    raise DataError(f"corpus: cannot clone {s}: {r.stderr.strip() or r.stdout.strip()}")
                os.replace(tmp, dest)  # a folder swap: a clone is in place whole or not at all
            root, git = dest, True
        else:
            root = Path(s).expanduser()
            if not root.is_dir():
                raise DataError(f"corpus: source {s} is not a folder or a git URL")
            git = (root / ".git").exists()
            base = root.resolve().name or "source"
        names[base] += 1
        name = base if names[base] == 1 else f"{base}-{names[base]}"
        out.append(Source(name, root.resolve(), git))
    return out


def _rmtree(p: Path) -> None:
    shutil.rmtree(p, ignore_errors=True)


def list_files(src: Source, exclude: list[str]) -> list[tuple[str, Path]]:
    """(corpus path, file path) pairs in a stable order; corpus path = source name / relative path."""
    rels: list[str] = []
    if src.git:
        r = subprocess.run(["git", "-C", str(src.root), "ls-files", "-z"], capture_output=True)
        if r.returncode != 0:
            raise DataError(f"corpus: `git ls-files` failed in {src.root}: {r.stderr.decode(errors='replace').strip()}")
        rels = [x for x in r.stdout.decode("utf-8", errors="surrogateescape").split("\0") if x]
        rels = [x for x in rels if not (set(Path(x).parts[:-1]) & SKIP_DIRS)]
    else:
        for dirpath, dirnames, filenames in os.walk(src.root):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
            rel_dir = os.path.relpath(dirpath, src.root)
            for f in sorted(filenames):
                rels.append(f if rel_dir == "." else os.path.join(rel_dir, f))
    rels = sorted(set(rels))
    out = []
    for rel in rels:
        if any(fnmatch.fnmatch(rel, pat) or fnmatch.fnmatch(f"{src.name}/{rel}", pat) for pat in exclude):
            continue
        p = src.root / rel
        if p.is_file() and not p.is_symlink():
            out.append((f"{src.name}/{rel}", p))
    return out


# ------------------------------------------------------------------- filters
def quality_problem(text: str, opts: CorpusOptions) -> str | None:
    """Why a decoded file is not training material (None if it is)."""
    n = len(text.encode("utf-8"))
    if n < opts.min_bytes:
        return "too_small"
    if n > opts.max_bytes:
        return "too_large"
    lines = text.splitlines() or [""]
    if max(len(line) for line in lines) > opts.max_line_length:
        return "long_line"
    if sum(len(line) for line in lines) / len(lines) > opts.max_mean_line_length:
        return "long_mean_line"
    if sum(c.isalnum() for c in text) / max(1, len(text)) < opts.min_alnum_fraction:
        return "low_alnum"
    return None


# ------------------------------------------------------------ near-dedupe
CODE_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d[\w.]*|\S")
# Kept verbatim when shingling; every other identifier becomes "ID", so renaming
# variables does not change a file's shingles. Per language: its keywords and the
# builtin names a rename would not touch.
_COMMON_NAMES = {"self", "cls", "print", "len", "range", "int", "str", "float", "list", "dict", "set", "tuple",
                 "bool", "object", "super", "isinstance", "enumerate", "zip", "map", "filter", "sorted", "open"}
_PYTHON_KEYWORDS = set(keyword.kwlist) | set(getattr(keyword, "softkwlist", [])) | _COMMON_NAMES
_OTHER_KEYWORDS = _COMMON_NAMES | {
    "if", "else", "for", "while", "return", "break", "continue", "class", "import", "in", "not", "and", "or",
    "void", "char", "short", "long", "double", "unsigned", "signed", "const", "static", "struct",
    "union", "enum", "typedef", "switch", "case", "default", "do", "goto", "sizeof", "extern",
    "public", "private", "protected", "function", "var", "let", "new", "this", "func", "fn",
    "mut", "impl", "use", "package", "interface", "extends", "implements", "throw", "throws", "try",
    "catch", "final", "null", "true", "false", "nil", "end", "then", "elif", "fi", "done", "esac", "def",
}


def _keywords(language: str | None) -> set[str]:
    return _PYTHON_KEYWORDS if language == "python" else _OTHER_KEYWORDS


MINHASH_SCHEME = "affine32"  # named, so stored signatures stay valid if datasketch changes its default


def shingles(text: str, k: int, language: str | None = "python") -> set[bytes]:
    """The k-token shingles of `text`, identifiers normalised (see _keywords)."""
    keep = _keywords(language)
    toks = [("ID" if (t[0].isalpha() or t[0] == "_") and t not in keep else t) for t in CODE_TOKEN.findall(text)]
    k = min(k, len(toks))
    return {"\x1f".join(toks[i:i + k]).encode() for i in range(len(toks) - k + 1)} if toks else set()


def minhash_of(text: str, k: int, num_perm: int, language: str | None = "python"):
    from datasketch import MinHash  # late: datasketch loads scipy (~0.8 s), only near-dedup needs it

    m = MinHash(num_perm=num_perm, scheme=MINHASH_SCHEME)
    m.update_batch(sorted(shingles(text, k, language)))
    return m


def _minhash(sig: list[int], num_perm: int):
    from datasketch import MinHash  # late: datasketch loads scipy (~0.8 s), only near-dedup needs it

    return MinHash(num_perm=num_perm, scheme=MINHASH_SCHEME, hashvalues=np.asarray(sig, dtype=np.uint64))


# --------------------------------------------------------------------- scan
def scan_file(path: str, file: Path, opts: CorpusOptions, bench: BenchmarkIndex | None) -> dict:
    """Everything the corpus-wide stages need to know about one file (not its text)."""
    rec: dict = {"path": path, "file": str(file)}
    try:
        raw = file.read_bytes()
    except OSError as e:
        return {**rec, "status": "unreadable", "detail": str(e)}
    rec["bytes"] = len(raw)
    rec["sha256"] = hashlib.sha256(raw).hexdigest()
    if b"\0" in raw:
        return {**rec, "status": "binary"}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return {**rec, "status": "not_utf8"}
    lang = detect_language(path, text[:200])
    rec["language"] = lang
    if lang is None:
        return {**rec, "status": "not_code"}
    if opts.languages is not None and lang not in opts.languages:
        return {**rec, "status": "language_not_selected"}
    problem = quality_problem(text, opts)
    if problem:
        return {**rec, "status": problem}
    rec["status"] = "ok"
    rec["minhash"] = [int(v) for v in minhash_of(text, opts.shingle_size, opts.num_perm, lang).hashvalues]
    if bench is not None:
        found = bench.matches(text, opts.decontam_min_matches, opts.decontam_min_fraction)
        if found:
            rec["contamination"] = found[:5]
    return rec


def _read_jsonl(path: Path) -> list[dict]:
    """Records of a JSONL file this module appends to; a torn last line (killed mid-write) is dropped."""
    out = []
    if not path.exists():
        return out
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return out


def split_of(path: str, seed: int, valid_fraction: float) -> str:
    """'valid' or 'train', from a hash of the path: stable when files are added or removed."""
    h = int.from_bytes(hashlib.sha256(f"{seed}:{path}".encode()).digest()[:8], "big") / 2**64
    return "valid" if h < valid_fraction else "train"


# --------------------------------------------------------------------- build
@dataclass
class CorpusReport:
    sources: list[str]
    files_seen: int = 0
    files_kept: int = 0
    bytes_kept: int = 0
    train_files: int = 0
    valid_files: int = 0
    train_bytes: int = 0
    valid_bytes: int = 0
    languages: dict = field(default_factory=dict)        # language -> {"files", "bytes"}
    removed: dict = field(default_factory=dict)          # reason -> count
    exact_duplicates: int = 0
    near_duplicates: int = 0
    contaminated: list = field(default_factory=list)     # {"path", "matches"}
    decontamination: dict = field(default_factory=dict)
    seconds: float = 0.0


def build_corpus(out: str | Path, sources: list[str] | None = None, data_dir: str | None = None,
                 opts: CorpusOptions | None = None, show_progress: bool = True) -> CorpusReport:
    opts = opts or CorpusOptions()
    opts.check()
    t0 = time.time()
    out = Path(out)
    work = out / ".work"
    work.mkdir(parents=True, exist_ok=True)
    data_dir = data_dir if data_dir is not None else os.environ.get("CODELM_DATA_DIR")
    srcs = resolve_sources(sources, work)

    files = [pf for s in srcs for pf in list_files(s, opts.exclude)]
    if not files:
        raise DataError(f"corpus: no files found in {', '.join(str(s.root) for s in srcs)}")

    # load_problems looks in data_dir, $CODELM_DATA_DIR, the package copy and the cache.
    bench = build_benchmark_index(data_dir, opts.decontam_ngram)
    decontam = {"benchmarks": bench.benchmarks, "missing": bench.missing, "ngram": opts.decontam_ngram,
                "texts": len(bench.labels)}

    # A previous scan is reused only if it was made with the same sources, settings and benchmarks.
    state = {"sources": [str(s.root) for s in srcs], "options": asdict(opts),
             "data": fingerprint_data_dir(data_dir), "benchmarks": bench.benchmarks}
    state_path, scan_path = work / "state.json", work / "scan.jsonl"
    old_state = json.loads(state_path.read_text()) if state_path.exists() else None
    if old_state != state:
        scan_path.unlink(missing_ok=True)
        atomic_write_stream(state_path, lambda f: json.dump(state, f, indent=1))
    done = {r["path"]: r for r in _read_jsonl(scan_path)}
    # Rewrite what was read, so a line torn by a kill does not swallow the next record appended.
    atomic_write_stream(scan_path, lambda f: f.writelines(json.dumps(r) + "\n" for r in done.values()))

    todo = [(p, f) for p, f in files if p not in done]
    with open(scan_path, "a", encoding="utf-8") as log:
        for p, f in tqdm(todo, desc="corpus: scan", unit="file", disable=not show_progress,
                         initial=len(files) - len(todo), total=len(files)):
            rec = scan_file(p, f, opts, bench)
            log.write(json.dumps(rec) + "\n")
            log.flush()
            done[p] = rec

    records = [done[p] for p, _ in files]
    report = CorpusReport(sources=[f"{s.name}={s.root}" for s in srcs], files_seen=len(records),
                          decontamination=decontam)
    removed: list[dict] = []
    kept: list[dict] = []

    def drop(rec: dict, reason: str, detail=None):
        report.removed[reason] = report.removed.get(reason, 0) + 1
        removed.append({"path": rec["path"], "reason": reason, **({"detail": detail} if detail else {})})

    seen_sha: dict[str, str] = {}
    from datasketch import MinHashLSH  # late: datasketch loads scipy (~0.8 s)

    lsh = MinHashLSH(threshold=opts.near_dup_threshold, num_perm=opts.num_perm)
    signatures = {}
    for rec in tqdm(records, desc="corpus: dedupe", unit="file", disable=not show_progress):
        if rec["status"] != "ok":
            drop(rec, rec["status"], rec.get("detail"))
            continue
        if rec["sha256"] in seen_sha:
            report.exact_duplicates += 1
            drop(rec, "exact_duplicate", seen_sha[rec["sha256"]])
            continue
        seen_sha[rec["sha256"]] = rec["path"]
        if rec.get("contamination"):
            report.contaminated.append({"path": rec["path"], "matches": rec["contamination"]})
            drop(rec, "contaminated", rec["contamination"][0]["text"])
            continue
        mh = _minhash(rec["minhash"], opts.num_perm)
        best = max(((mh.jaccard(signatures[c]), c) for c in lsh.query(mh)), default=None)
        if best is not None and best[0] >= opts.near_dup_threshold:
            report.near_duplicates += 1
            drop(rec, "near_duplicate", f"{best[1]} (jaccard~{best[0]:.2f})")
            continue
        lsh.insert(rec["path"], mh)
        signatures[rec["path"]] = mh
        kept.append(rec)
    if not kept:
        raise DataError(f"corpus: every one of the {len(records)} files was filtered out "
                        f"(reasons: {report.removed}); nothing to write")

    splits = {r["path"]: split_of(r["path"], opts.seed, opts.valid_fraction) for r in kept}
    if opts.valid_fraction > 0 and len(kept) >= 2 and "valid" not in splits.values():
        # Tiny corpora: make sure validation is not empty.
        splits[min(splits, key=lambda p: hashlib.sha256(f"{opts.seed}:{p}".encode()).digest())] = "valid"

    def write_split(name: str):
        def write(f):
            chosen = [rec for rec in kept if splits[rec["path"]] == name]
            for rec in tqdm(chosen, desc=f"corpus: write {name}", unit="file", disable=not show_progress):
                raw = Path(rec["file"]).read_bytes()
                if hashlib.sha256(raw).hexdigest() != rec["sha256"]:
                    raise DataError(f"corpus: {rec['file']} changed while the corpus was being built; run again")
                f.write(json.dumps({"path": rec["path"], "language": rec["language"], "bytes": rec["bytes"],
                                    "sha256": rec["sha256"], "text": raw.decode("utf-8")}) + "\n")
                b = rec["bytes"]
                setattr(report, f"{name}_files", getattr(report, f"{name}_files") + 1)
                setattr(report, f"{name}_bytes", getattr(report, f"{name}_bytes") + b)
                lang = report.languages.setdefault(rec["language"], {"files": 0, "bytes": 0})
                lang["files"] += 1
                lang["bytes"] += b
        atomic_write_stream(out / f"{name}.jsonl", write)

    write_split("train")
    write_split("valid")
    report.files_kept = report.train_files + report.valid_files
    report.bytes_kept = report.train_bytes + report.valid_bytes
    report.seconds = round(time.time() - t0, 1)
    atomic_write_stream(out / "removed.jsonl", lambda f: f.writelines(json.dumps(r) + "\n" for r in removed))
    atomic_write_stream(out / "report.json", lambda f: json.dump(asdict(report), f, indent=1))
    atomic_write_stream(out / "report.md", lambda f: f.write(report_markdown(report)))
    return report


def _mb(b: int) -> str:
    return f"{b / 1e6:.2f} MB"


def report_markdown(r: CorpusReport) -> str:
    lines = ["# Corpus report", "",
             f"Sources: {', '.join(r.sources)}", "",
             "| | files | bytes |", "|---|---:|---:|",
             f"| seen | {r.files_seen} | |",
             f"| kept | {r.files_kept} | {_mb(r.bytes_kept)} |",
             f"| train | {r.train_files} | {_mb(r.train_bytes)} |",
             f"| valid | {r.valid_files} | {_mb(r.valid_bytes)} |", "",
             "## Languages", "", "| language | files | bytes |", "|---|---:|---:|"]
    for lang, v in sorted(r.languages.items(), key=lambda kv: -kv[1]["bytes"]):
        lines.append(f"| {lang} | {v['files']} | {_mb(v['bytes'])} |")
    lines += ["", "## Removed", "", "| reason | files |", "|---|---:|"]
    for reason, n in sorted(r.removed.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {reason} | {n} |")
    d = r.decontamination
    lines += ["", "## Decontamination", "",
              f"Word {d.get('ngram')}-grams of the prompts and solutions of: "
              f"{', '.join(d.get('benchmarks') or []) or 'none'}."]
    if d.get("missing"):
        lines.append(f"Not checked (data missing): {'; '.join(d['missing'])}.")
    lines.append(f"Contaminated files removed: {len(r.contaminated)}.")
    for c in r.contaminated[:50]:
        m = c["matches"][0]
        lines.append(f"- `{c['path']}`: {m['shared']}/{m['of']} n-grams of {m['text']}")
    lines += ["", f"Built in {r.seconds:.0f} s.", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------ reading
def read_corpus(path: str | Path, split: str = "train") -> Iterator[dict]:
    """Records of a corpus folder's split (or of a JSONL file with a "text" field), streamed."""
    p = Path(path)
    f = p / f"{split}.jsonl" if p.is_dir() else p
    if not f.is_file():
        raise DataError(f"corpus: {f} not found (build one with `codelm corpus --out {p}`)")
    for i, rec in iter_jsonl(f):
        if not isinstance(rec.get("text"), str):
            raise DataError(f"{f}:{i}: expected an object with a string \"text\" field")
        yield rec


def corpus_texts(path: str | Path, split: str = "train") -> Iterable[str]:
    for rec in read_corpus(path, split):
        yield rec["text"]


# ---------------------------------------------------------------------- CLI
def corpus_main(out: str | Path, *, source: list[str] | None = None, data_dir: str | None = None,
                valid_fraction: float = 0.02, seed: int = 0, languages: str | None = None,
                exclude: list[str] | None = None, max_file_bytes: int | None = None, force: bool = False) -> CorpusReport:
    """Entry point of `codelm corpus` (flags in codelm/cli.py): builds the corpus in `out` and returns its report
    (the command line prints it). `source` defaults to the Python standard library, `languages` is
    comma-separated."""
    opts = CorpusOptions(valid_fraction=valid_fraction, seed=seed)
    if languages:
        opts.languages = [x.strip() for x in languages.split(",") if x.strip()]
    if exclude:
        opts.exclude = list(exclude)
    if max_file_bytes:
        opts.max_bytes = max_file_bytes

    claim_output(out, "corpus", folder=True, force=force, what="corpus folder",
                 legacy=lambda p: (p / ".work").is_dir() or (p / "report.json").exists())
    r = build_corpus(out, sources=source, data_dir=data_dir, opts=opts)
    mark_output(out, "corpus")
    return r


def corpus_lines(r: CorpusReport, out: str | Path) -> list[str]:
    """What `codelm corpus` prints about a finished corpus (stdout lines; the missing data is warned of)."""
    return [f"corpus: {r.files_kept} files ({_mb(r.bytes_kept)}) kept of {r.files_seen}: "
            f"{r.train_files} train, {r.valid_files} valid; {r.exact_duplicates} exact and "
            f"{r.near_duplicates} near duplicates, {len(r.contaminated)} contaminated removed",
            f"corpus: report in {Path(out) / 'report.md'}"]
