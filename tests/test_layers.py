"""The package's layers, as its docstring states them, checked on every
import of every module (at the top of a file or inside a function)."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / 'workbench'
# layer -> the layers it may import (besides itself)
ALLOWED = {
    'core': set(),
    'methods': {'core'},
    'metrics': {'core'},
    'experiments': {'core', 'methods', 'metrics'},
    'cli': {'core', 'methods', 'metrics', 'experiments'},
    'root': {'core'},  # workbench/__init__.py
    'main': {'cli'},  # workbench/__main__.py: `python -m workbench`
}


def module_name(path):
    rel = path.relative_to(PACKAGE.parent).with_suffix('')
    parts = list(rel.parts)
    if parts[-1] == '__init__':
        parts.pop()
    return '.'.join(parts)


def layer(module):
    parts = module.split('.')
    if len(parts) == 1:
        return 'root'
    return 'main' if parts[1] == '__main__' else parts[1]


def imports(path):
    """(imported workbench module, line, inside a function) of a file."""
    name = module_name(path)
    package = name if path.name == '__init__.py' else name.rpartition('.')[0]
    tree = ast.parse(path.read_text())
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in ast.walk(node):
                if sub is not node:
                    inside.add(id(sub))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')
                base = base[:len(base) - node.level + 1]
                target = '.'.join(base + ([node.module] if node.module
                                          else []))
            else:
                target = node.module or ''
            if not target.startswith('workbench'):
                continue
            for alias in node.names:  # `from . import x` names a module
                sub = f'{target}.{alias.name}'
                mod = sub if (PACKAGE.parent / (sub.replace('.', '/') +
                                                '.py')).exists() or (
                    PACKAGE.parent / sub.replace('.', '/')).is_dir() \
                    else target
                out.append((mod, node.lineno, id(node) in inside))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith('workbench'):
                    out.append((alias.name, node.lineno, id(node) in inside))
    return out


FILES = sorted(PACKAGE.rglob('*.py'))


def test_every_import_follows_the_layer_rule():
    wrong = []
    for path in FILES:
        me = module_name(path)
        for target, line, _ in imports(path):
            if target == 'workbench':
                target = 'workbench.core'  # it holds WorkbenchError only
            a, b = layer(me), layer(target)
            if a != b and b not in ALLOWED[a]:
                wrong.append(f'{me}:{line} imports {target} ({a} -> {b})')
    assert not wrong, '\n'.join(wrong)


def test_no_import_of_the_package_inside_a_function():
    """An import inside a function hides a cycle; the package's own
    modules are imported at the top (third-party ones may wait, for
    memory or as optional dependencies)."""
    hidden = [f'{module_name(p)}:{line} imports {t}' for p in FILES
              for t, line, inside in imports(p) if inside]
    assert not hidden, '\n'.join(hidden)


def test_no_cycle_between_modules():
    graph = {module_name(p): {t for t, _, _ in imports(p)} for p in FILES}
    state = {}

    def visit(m, path):
        state[m] = 'open'
        for n in graph.get(m, ()):
            if n == m or n not in graph:
                continue
            if state.get(n) == 'open':
                raise AssertionError(' -> '.join(path + [m, n]))
            if n not in state:
                visit(n, path + [m])
        state[m] = 'done'

    for m in graph:
        if m not in state:
            visit(m, [])


@pytest.mark.parametrize('name', ['core', 'methods', 'metrics',
                                  'experiments', 'cli'])
def test_each_layer_is_a_folder(name):
    assert (PACKAGE / name / '__init__.py').exists()


def test_the_registry_holds_every_lm_method():
    """Every method module (one with a NAME) is registered, in ORDER, with
    the whole interface: adding a method is its file and its tests, and
    nothing here changes."""
    from dataclasses import fields

    from workbench import methods
    from workbench.methods.base import Task
    assert {'ga', 'seul', 'graddiff', 'npo', 'loo', 'kga', 'llmu',
            'whp'} <= set(methods.REGISTRY)
    files = {p.stem for p in (PACKAGE / 'methods').glob('*.py')
             if '\nNAME = ' in p.read_text()}
    assert files == {m.__name__.rpartition('.')[2]
                     for m in methods.REGISTRY.values()}
    orders = [m.ORDER for m in methods.REGISTRY.values()]
    assert orders == sorted(set(orders)), 'distinct ORDERs, in order'
    task_fields = {f.name for f in fields(Task)}
    for name, m in methods.REGISTRY.items():
        assert m.NAME == name and m.TITLE and callable(m.plan)
        assert isinstance(m.NEEDS, tuple) and set(m.NEEDS) <= task_fields
        assert isinstance(m.HELPERS, tuple)
        m.Config()  # every field has a default


def test_an_import_inside_a_function_says_why():
    """Imports belong at the top of a module; one inside a function is
    there for memory (a large library loaded only where it is used) or an
    optional dependency, and a comment on it, or just above its block of
    imports, says which."""
    unexplained = []
    for path in sorted(PACKAGE.rglob('*.py')):
        lines = path.read_text().splitlines()
        tree = ast.parse('\n'.join(lines))
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            found = sorted((n for n in ast.walk(fn) if isinstance(
                n, (ast.Import, ast.ImportFrom))), key=lambda n: n.lineno)
            starts = {}  # an import -> the first line of its block
            for before, node in zip([None] + found, found):
                joined = before is not None and \
                    node.lineno == before.end_lineno + 1
                starts[node] = starts[before] if joined else node.lineno
            for node in found:
                first = starts[node] - 1
                said = any('#' in lines[j] for j in range(
                    first, node.end_lineno)) or lines[first - 1].strip() \
                    .startswith('#')
                if not said:
                    unexplained.append(f'{path.relative_to(PACKAGE)}:'
                                       f'{node.lineno}')
    assert not unexplained, unexplained
