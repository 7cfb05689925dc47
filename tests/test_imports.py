"""The package's dependency rule: no import cycle inside codelm/, counting imports placed inside
functions too (a cycle hidden behind a late import is still a cycle); and no argparse Namespace beyond
cli.py (the library takes typed parameters)."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "codelm"


def module_graph() -> dict[str, set[str]]:
    """codelm module -> the codelm modules it imports (anywhere in its file)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{alias.name}" for alias in node.names]
                targets = [t if t in modules else base for t in targets]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_inside_codelm():
    graph = module_graph()
    assert "codelm.evaluate.runner" in graph and graph["codelm.evaluate.runner"]
    assert cycles(graph) == []


# The pipeline's order, bottom first: a module may import its own stage and the stages below it.
LAYERS = [("errors", "files", "benchdata"), ("tokenizer",), ("data",), ("model",), ("train",), ("generate",),
          ("evaluate",), ("serve", "chat", "selfinstruct", "export"), ("demo", "lab"), ("cli", "")]


def layer_of(module: str) -> int:
    stage = module.split(".")[1] if "." in module else ""
    return next(i for i, names in enumerate(LAYERS) if stage in names)


def test_dependencies_point_down_the_pipeline():
    graph = module_graph()
    upward = [f"{m} -> {d}" for m, deps in sorted(graph.items()) for d in sorted(deps) if layer_of(d) > layer_of(m)]
    assert upward == []


# Flags are declared once, in codelm/cli.py (or a config dataclass it builds them from): the library takes typed
# parameters, and no argparse Namespace passes beyond cli.py.
NAMESPACE_PENDING: set = set()  # (file, function) allowed to take a Namespace for now: none


def namespace_readers(tree) -> list[str]:
    """Functions with a parameter named `args` that read `args.<attr>`: a Namespace taken whole."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        a = node.args
        if "args" not in [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]:
            continue
        body = node.body if isinstance(node.body, list) else [node.body]
        if any(isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "args"
               for stmt in body for n in ast.walk(stmt)):
            found.append(getattr(node, "name", "<lambda>"))
    return found


def test_the_namespace_check_finds_one():
    assert namespace_readers(ast.parse("def run(args):\n    return args.model\n")) == ["run"]
    assert namespace_readers(ast.parse("def run(*args):\n    return args.count(1)\n")) == []
    assert namespace_readers(ast.parse("def run(model, *, stream=True):\n    return model\n")) == []


def test_no_namespace_beyond_the_command_line():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel == "cli.py":
            continue
        for name in namespace_readers(ast.parse(path.read_text(encoding="utf-8"))):
            if (rel, name) not in NAMESPACE_PENDING:
                bad.append(f"codelm/{rel}: {name}(args)")
    assert not bad, "take typed parameters; cli.py unpacks the flags: " + ", ".join(bad)


def test_cli_parser_and_scoring_do_not_import_torch():
    """torch takes ~1 s to import: building the CLI's parser (every command, `--help`) and the whole
    scoring path (`codelm score`, which never runs a model) must not pay for it."""
    import subprocess
    import sys

    code = ("import sys; from codelm.cli import build_parser; build_parser(); "
            "import codelm.evaluate.scorers, codelm.evaluate.runner, codelm.generate.engine_config; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           cwd=PACKAGE.parent).stdout.strip()
    assert found == "[]", found
