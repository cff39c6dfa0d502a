"""The import graph, read from the source: every module imports only modules below it, so there is no cycle.

The layers, lowest first (a module may import those on lines above its own):
    common                                  the shared names: labels, exit codes, atomic write, sigmoid
    model, metrics, optim, runtimes         torch only; numpy only; torch only; the runtime chooser
    inputs, tracking, decisions             reading text; Aim; calibration and policies
    config, data, fairness                  the flat config; Kaggle CSVs, split, tokens, batches; bias metrics
    checkpoint, device, validation          checkpoints and building the model; ranks, precision; validation
    scoring                                 the torch-free serving core
    classifier, checks, model_card          the Python API; export's checks; MODEL_CARD.md
    api                                     the HTTP formats (classify, Perspective)
    train, export, predict, serve, evaluate, compare    the command-line scripts: nothing imports them
Every import counts, at the top of a file or inside a function; own modules are imported at the top, except
for the few listed in INNER with their reason.
"""
import ast
import os

from conftest import ROOT

LAYERS = [["common"], ["model", "metrics", "optim", "runtimes"], ["inputs", "tracking", "decisions"],
          ["config", "data", "fairness"], ["checkpoint", "device", "validation"], ["scoring"],
          ["classifier", "checks", "model_card"], ["api"],
          ["train", "export", "predict", "serve", "evaluate", "compare"]]
SCRIPTS = set(LAYERS[-1])
INNER = {}  # (module, imported module) -> why it is imported inside a function; none today


def own_imports(path, modules):
    """-> [(imported module, at the top of the file?)] for every import of one of modules in the file."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module.split(".")[0]]
        else:
            continue
        out += [(n, node.col_offset == 0) for n in names if n in modules]
    return out


def graph():
    modules = {f[:-3] for f in os.listdir(ROOT) if f.endswith(".py")}
    return modules, {m: own_imports(os.path.join(ROOT, f"{m}.py"), modules) for m in modules}


def find_cycle(edges):
    """A cycle in {module: set of imported modules} as a list of modules, or None (depth-first search)."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(edges.get(m, ())):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        state[m] = "done"
        stack.pop()
        return None
    for m in sorted(edges):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_every_module_has_a_layer():
    modules, _ = graph()
    placed = [m for layer in LAYERS for m in layer]
    assert sorted(placed) == sorted(modules), "a module is missing from LAYERS, or LAYERS names one that is gone"


def test_no_import_cycles():
    _, imports = graph()
    cycle = find_cycle({m: {n for n, _ in found} for m, found in imports.items()})
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_every_module_imports_only_modules_below_it():
    _, imports = graph()
    level = {m: i for i, layer in enumerate(LAYERS) for m in layer}
    upward = [f"{m} imports {n}" for m, found in imports.items() for n, _ in found if level[n] >= level[m]]
    assert not upward, "; ".join(sorted(upward))


def test_own_modules_are_imported_at_the_top():
    _, imports = graph()
    inner = {(m, n) for m, found in imports.items() for n, top in found if not top}
    assert inner <= set(INNER), f"imported inside a function without a reason in INNER: {sorted(inner - set(INNER))}"


def test_no_test_imports_another_test_file_and_the_bench_imports_no_test():
    tests_dir = os.path.join(ROOT, "tests")
    tests = {f[:-3] for f in os.listdir(tests_dir) if f.startswith("test_") and f.endswith(".py")}
    bad = [f"tests/{f}" for f in os.listdir(tests_dir) if f.endswith(".py")
           if own_imports(os.path.join(tests_dir, f), tests)]
    bench = os.path.join(ROOT, "bench")
    bad += [f"bench/{f}" for f in os.listdir(bench) if f.endswith(".py")
            if own_imports(os.path.join(bench, f), tests | {"conftest"})
            or '"tests"' in open(os.path.join(bench, f), encoding="utf-8").read()]
    assert not bad, bad
