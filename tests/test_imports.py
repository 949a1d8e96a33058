"""The package's import graph: imports go one way (no cycle, function-level imports included), and every module
imports on its own, first, in a fresh interpreter state."""
import ast
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "sparkdl")


def modules():
    """{module name: file} of every module of sparkdl (packages by their __init__.py)."""
    found = {}
    for directory, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(directory, f)
                name = os.path.relpath(path[:-3], ROOT).replace(os.sep, ".")
                found[name[:-len(".__init__")] if name.endswith(".__init__") else name] = path
    return found


def _ancestors(name):
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def import_graph(mods):
    """{module: the sparkdl modules importing it runs}, from every import statement, those inside functions
    included: a target's packages count too (importing a.b.c runs a/__init__ and a/b/__init__), except those
    already being imported around the importer (its own packages)."""
    def known(name):
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in mods.items():
        package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, ast.Import):
                targets.update(known(a.name) for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                    + ([node.module] if node.module else []))
                else:
                    base = node.module
                for a in node.names:   # a module of the package, else a name defined in ``base``
                    targets.add(f"{base}.{a.name}" if f"{base}.{a.name}" in mods else known(base))
        edges = set()
        for t in targets - {None, name}:
            edges.add(t)
            edges.update(_ancestors(t) - _ancestors(name) - {name})
        graph[name] = edges
    return graph


def cycles(graph):
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on, stack, found, counter = {}, {}, set(), [], [], [0]
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle_through_a_package_and_one_inside_a_function(tmp_path):
    graph = {"p": {"p.a"}, "p.a": {"q.b"}, "q": set(), "q.b": {"p"}, "r": {"s"}, "s": set()}
    assert cycles(graph) == [["p", "p.a", "q.b"]]
    pkg = tmp_path / "sparkdl"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .sub import low\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "low.py").write_text("def f():\n    from ..top import g\n")
    (pkg / "top.py").write_text("from .sub import low\n")
    mods = {"sparkdl": str(pkg / "__init__.py"), "sparkdl.sub": str(pkg / "sub" / "__init__.py"),
            "sparkdl.sub.low": str(pkg / "sub" / "low.py"), "sparkdl.top": str(pkg / "top.py")}
    assert cycles(import_graph(mods)) == [["sparkdl.sub.low", "sparkdl.top"]]


def test_imports_go_one_way():
    graph = import_graph(modules())
    assert len(graph) > 50 and graph["sparkdl.nn.model"] >= {"sparkdl.train.loop", "sparkdl.nn.saving"}
    found = cycles(graph)
    detail = "\n".join(" -> ".join(c) + "\n" + "\n".join(f"  {m} imports {sorted(graph[m] & set(c))}" for m in c)
                       for c in found)
    assert not found, f"import cycles:\n{detail}"


def test_every_module_imports_first_on_its_own():
    # one interpreter; before each module, every sparkdl module is dropped from sys.modules, so each is the
    # first of the package imported (third-party modules stay loaded: only the package's own order matters)
    script = ("import importlib, sys\n"
              "failed = []\n"
              "for name in sys.argv[1:]:\n"
              "    for m in [m for m in sys.modules if m == 'sparkdl' or m.startswith('sparkdl.')]:\n"
              "        del sys.modules[m]\n"
              "    try:\n"
              "        importlib.import_module(name)\n"
              "    except Exception as e:\n"
              "        failed.append(f'{name}: {type(e).__name__}: {e}')\n"
              "print('\\n'.join(failed))\n"
              "sys.exit(1 if failed else 0)\n")
    names = sorted(modules())
    r = subprocess.run([sys.executable, "-c", script, *names], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def test_no_module_is_over_300_lines():
    long = {name: n for name, path in modules().items() if (n := sum(1 for _ in open(path))) > 300}
    assert not long, f"modules over 300 lines (split them by job): {long}"
