"""The compilers and runtimes MultiPL-E programs need: found as the user's shell finds them, made
visible inside the sandbox, and proven by a canary program before any sample is judged.

Finding a tool. Each command is looked up on the user's PATH and its symlinks are followed to the real
file, so tools installed where their installers put them work: rustup's proxies under ~/.cargo/bin
(the proxy is replaced by the toolchain's own rustc, found with `rustc --print sysroot`, since the
proxy reads settings from the user's home), Go's GOROOT (`go env GOROOT`), a node under nvm, a JDK in
/opt, a perl under perlbrew. Tools under the system folders (/usr, /bin, /lib...) need nothing more:
the sandbox shows those folders anyway.

What becomes visible. For a tool outside the system folders the namespaces sandbox binds, read-only
and at the same path: the toolchain's own tree when it has one (the Rust sysroot, GOROOT, the folder
above a `bin/` folder, such as ~/.nvm/versions/node/v20.1.0 or /opt/jdk-21), else the single file.
Never a home folder, nor a folder directly inside one (~/.local, ~/.cargo): there only the tool's
own files are shown, never the rest of the user's home. Perl module folders from the user's
PERL5LIB are shown too, and passed on in PERL5LIB.

The canary. A tiny known-good program per language, written the way MultiPL-E's tests are (the same
imports and libraries: Test::Deep for Perl, javatuples for Java, node:assert for JavaScript), is
compiled and run inside the sandbox before a run. When it fails, the run stops with one line naming
the language, the missing piece and how to get it; a language is never scored at 0 because its
toolchain cannot run.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field

from codelm.errors import CodelmError

SYSTEM_FOLDERS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
BASE_PATH = "/usr/local/bin:/usr/bin:/bin"
JAVATUPLES = "/usr/share/java/javatuples.jar"  # Debian's libjavatuples-java; the prompts import org.javatuples

# How to get each piece, named in refusals.
HOW_TO_GET = {
    "g++": "Debian: apt-get install g++",
    "javac": "Debian: apt-get install default-jdk-headless",
    "java": "Debian: apt-get install default-jdk-headless",
    JAVATUPLES: "Debian: apt-get install libjavatuples-java",
    "node": "Debian: apt-get install nodejs",
    "tsc": "npm install -g typescript",
    "php": "Debian: apt-get install php-cli",
    "perl": "Debian: apt-get install perl",
    "bash": "Debian: apt-get install bash",
    "rustc": "rustup.rs, or Debian: apt-get install rustc",
    "go": "Debian: apt-get install golang-go",
    "mcs": "Debian: apt-get install mono-mcs",
    "mono": "Debian: apt-get install mono-runtime",
    "cc": "Debian: apt-get install gcc",
}
PERL_MODULES = {"Test::Deep": "libtest-deep-perl"}  # modules MultiPL-E's Perl tests use -> Debian package


class ToolchainError(CodelmError):
    """A language's toolchain is missing or cannot run inside the sandbox."""


@dataclass(frozen=True)
class Toolchain:
    lang: str
    commands: dict = field(default_factory=dict)  # command as the steps name it -> file run in the sandbox
    expose: tuple = ()  # host paths shown read-only inside the sandbox, besides the system folders
    env: dict = field(default_factory=dict)  # the steps' environment: PATH (and PERL5LIB)

    def argv(self, argv) -> list:
        return [self.commands.get(argv[0], argv[0]), *argv[1:]]


def is_system(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in SYSTEM_FOLDERS)


def _home() -> str:
    return os.path.realpath(os.path.expanduser("~"))


def _safe_tree(folder: str) -> bool:
    """Whether a whole folder may be shown: not /, not a home folder, an ancestor of one or a folder directly in one."""
    home = _home()
    folder = folder.rstrip("/")
    return bool(folder) and folder != home and not (home + "/").startswith(folder + "/") \
        and os.path.dirname(folder) != home


def _shown(path: str) -> tuple:
    """What to expose so that the real file `path` runs: nothing under the system folders, its
    installation tree (the folder above bin/) where that is safe, else the file alone."""
    if is_system(path):
        return ()
    folder = os.path.dirname(path)
    if os.path.basename(folder) == "bin" and _safe_tree(os.path.dirname(folder)):
        return (os.path.dirname(folder),)
    return (path,)


def _ask(argv: list, what: str, lang: str) -> str:
    """Run a host command the way the user's shell would (their environment), for a path it prints."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ToolchainError(f"multipl-e-{lang}: `{' '.join(argv)}` failed ({e}); cannot find {what}") from None
    out = done.stdout.strip()
    if done.returncode != 0 or not out:
        detail = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
        raise ToolchainError(f"multipl-e-{lang}: `{' '.join(argv)}` failed ({detail}); cannot find {what}")
    return out.splitlines()[-1]


def _find(name: str, lang: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise ToolchainError(f"multipl-e-{lang}: {name} is not on PATH ({HOW_TO_GET.get(name, 'install it')})")
    return found


def _tool(name: str, lang: str) -> tuple[str, tuple]:
    """(file to run inside the sandbox, host paths it needs) for command `name`."""
    found = _find(name, lang)
    real = os.path.realpath(found)
    if name == "rustc":
        # rustup's proxy reads its settings from the user's home: run the toolchain's own rustc.
        sysroot = os.path.realpath(_ask([found, "--print", "sysroot"], "the Rust sysroot", lang))
        real = os.path.join(sysroot, "bin", "rustc")
        return real, (() if is_system(sysroot) else (sysroot,))
    if name == "go":
        goroot = os.path.realpath(_ask([found, "env", "GOROOT"], "GOROOT", lang))
        real = os.path.join(goroot, "bin", "go")
        return real, (() if is_system(goroot) else (goroot,))
    if name == "tsc":
        # An npm package's script: show its package (it runs with the node found on PATH).
        package = os.path.dirname(os.path.dirname(real))
        if os.path.isfile(os.path.join(package, "package.json")) and not is_system(package):
            return real, (package,)
    if is_system(found) and is_system(real):
        return found, ()  # as the shell runs it: a multi-call program may read its own name (clang++)
    return real, _shown(real)


def resolve(lang: str, commands) -> Toolchain:
    """The toolchain of `lang` for the given step commands, found on the user's PATH; refuses by name what is missing."""
    resolved, expose, env = {}, [], {}
    names = [c for c in commands if not c.startswith("./")]  # ./main: the program a step compiled
    if lang == "ts":
        names.append("node")  # tsc is a node script, and its output runs under node
    for name in dict.fromkeys(names):
        path, shown = _tool(name, lang)
        resolved[name] = path
        expose.extend(shown)
    if lang == "java" and not os.path.exists(JAVATUPLES):
        raise ToolchainError(f"multipl-e-java: {JAVATUPLES} is missing ({HOW_TO_GET[JAVATUPLES]})")
    if lang == "pl":
        folders = [os.path.realpath(p) for p in os.environ.get("PERL5LIB", "").split(":") if p and os.path.isdir(p)]
        if folders:
            env["PERL5LIB"] = ":".join(folders)
            expose.extend(f for f in folders if not is_system(f))
    folders = [os.path.dirname(p) for p in resolved.values() if not is_system(p)]
    env["PATH"] = ":".join(list(dict.fromkeys(folders)) + [BASE_PATH])
    return Toolchain(lang, resolved, tuple(dict.fromkeys(expose)), env)


# ----------------------------------------------------------------------------- canaries
# A known-good program per language, written as MultiPL-E's prompt + completion + tests are.
CANARIES = {
    "cpp": "#include<assert.h>\n#include<bits/stdc++.h>\nlong add(long x, long y) {\n    return x + y;\n}\n"
           "int main() {\n    auto candidate = add;\n    assert(candidate((2), (3)) == (5));\n}\n",
    "cs": "using System;\nusing System.Numerics;\nusing System.Diagnostics;\nusing System.Collections.Generic;\n"
          "using System.Linq;\nusing System.Text;\nusing System.Security.Cryptography;\nclass Problem {\n"
          "    public static long Add(long x, long y) {\n        return x + y;\n    }\n"
          "    public static void Main(string[] args) {\n    Debug.Assert(Add((2L), (3L)) == (5L));\n    }\n\n}\n",
    "go": "package add_test\n\nimport (\n    \"testing\"\n    \"fmt\"\n)\n\nfunc add(x int, y int) int {\n"
          "    return x + y\n}\n\nfunc TestAdd(t *testing.T) {\n  candidate := add\n"
          "  if fmt.Sprintf(\"%v\", candidate(2, 3)) != fmt.Sprintf(\"%v\", 5) {\n    t.Errorf(\"wrong\")\n  }\n}\n",
    "java": "import java.util.*;\nimport java.lang.reflect.*;\nimport org.javatuples.*;\nimport java.security.*;\n"
            "import java.math.*;\nimport java.io.*;\nimport java.util.stream.*;\nclass Problem {\n"
            "    public static Pair<Long, Long> add(long x, long y) {\n        return Pair.with(x + y, x);\n    }\n"
            "    public static void main(String[] args) {\n    assert(add((2l), (3l)).equals(Pair.with(5l, 2l)));\n"
            "    }\n\n}\n",
    "js": "function add(x, y){\n  return x + y;\n}\n\nconst assert = require('node:assert');\n\n"
          "function test() {\n  let candidate = add;\n  assert.deepEqual(candidate(2, 3),5);\n}\n\ntest();\n",
    "ts": "function add(x: number, y: number): number {\n  return x + y;\n}\n\ndeclare var require: any;\n"
          "const assert = require('node:assert');\n\nfunction test() {\n  let candidate = add;\n"
          "  assert.deepEqual(candidate(2, 3),5);\n}\n\ntest();\n",
    "php": "<?php\nfunction add($x, $y) {\n    return $x + $y;\n}\nfunction candidate(...$args) {\n"
           "    return add(...$args);\n}\n\nfunction test(): void {\n"
           "    if (candidate(2, 3) !== 5) { throw new Exception(\"Test failed!\"); }\n}\n\ntest();\n",
    "pl": "sub add {\n    my($x, $y) = @_;\n    return $x + $y;\n}\nuse Test::Deep;\n\n\nsub testhumaneval {\n"
          "    my $candidate = \\&add;\n        if(eq_deeply($candidate->(2, 3),5)) {\n        print \"ok!\" }else{\n"
          "        exit 1;\n        }\n}\n\ntesthumaneval();\n",
    "rs": "fn add(x: isize, y: isize) -> isize {\n    x + y\n}\n\nfn main() {\n    let candidate = add;\n"
          "    assert_eq!(candidate(2, 3), 5);\n}\n",
    "sh": "#!/bin/bash\nadd() {\n    echo $(( $1 + $2 ))\n}\n\ncandidate() {\n    add \"$@\"\n}\n\nset -e\n"
          "run_test() {\n    [[ $(candidate \"2\" \"3\") = \"5\" ]]\n}\n\nrun_test\n",
}


def diagnose(lang: str, toolchain: Toolchain, stage: str, text: str) -> str:
    """One line for a canary that failed at `stage` ("compile" or "run") with error output `text`."""
    prefix = f"multipl-e-{lang}:"
    module = re.search(r"Can't locate (\S+)\.pm in @INC", text)
    if module:
        name = module.group(1).replace("/", "::")
        how = f"Debian: apt-get install {PERL_MODULES[name]}" if name in PERL_MODULES else f"cpan {name}"
        return f"{prefix} Perl module {name} is missing ({how})"
    if "org.javatuples" in text:
        return f"{prefix} the javatuples library cannot be loaded from {JAVATUPLES} ({HOW_TO_GET[JAVATUPLES]})"
    if re.search(r"linker `?cc`? not found|cannot run cc|error: linker", text):
        return f"{prefix} the C linker rustc calls (cc) cannot run inside the sandbox ({HOW_TO_GET['cc']})"
    missing = re.search(r"cannot run (\S+): (.+)", text)
    if missing:
        command, why = missing.group(1), missing.group(2).strip()
        hint = "" if why != "Permission denied" else \
            "; the sandbox user cannot read it: install the toolchain outside your home, or use --sandbox namespaces"
        return f"{prefix} {command} cannot run inside the sandbox ({why}){hint}"
    last = (text.strip().splitlines() or ["no error output"])[-1][:240]
    tools = ", ".join(f"{k}={v}" for k, v in toolchain.commands.items())
    return f"{prefix} the toolchain's known-good test program failed to {stage} in the sandbox ({last}); tools: {tools}"
