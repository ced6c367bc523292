"""Find file writes that bypass plantlib.io's atomic helpers, by reading the syntax tree of the code.

A *write* is a call that creates or changes a file: `open()` / `Path.open()` / `os.open()` in a writing mode,
`Path.write_text` / `write_bytes`, `.save()`, `torch.save`, `np.save*`, `DataFrame.to_csv` / `to_json` / ...,
`.savefig()`, `json` / `pickle` / `yaml` dumps into a file, `shutil.copy*` / `move`, `torch.onnx.export` and
`papermill.execute_notebook`. Its *target* is the argument naming the file (the receiver for `Path` methods).

A write is atomic when its target is, by how the code binds the name (never by what the name is called):

- *a temporary*: a name bound by `with atomic_path(...) as NAME`, a handle opened on a temporary, the parameter
  through which `atomic_write(target, fn)` hands `fn` its handle, a function parameter that every call in the
  module fills with a temporary, or a name the same function renames into place with `os.replace` / `os.rename`;
- *in memory*: a name bound to `io.BytesIO()` / `io.StringIO()`;
- *private*: a path inside a `tempfile.TemporaryDirectory()` of the same function (nobody else sees the file,
  and it is deleted afterwards).

A name counts only when every binding of it in its scope is of that kind. A call of a plantlib method on a
parameter annotated with its class (`config: RunConfig` ... `config.to_json(path)`) is not a write here: the
method's own body is scanned where it is defined. A sink with no target (`frame.to_csv(index=False)` returns a
string) writes nothing.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

# Calls by full dotted name: (position, keyword) of the target among the arguments.
FUNCTION_SINKS: dict[str, tuple[int, str]] = {
    "torch.save": (1, "f"),
    "torch.onnx.export": (2, "f"),
    "onnx.save": (1, "f"),
    "onnx.save_model": (1, "f"),
    "np.save": (0, "file"),
    "np.savez": (0, "file"),
    "np.savez_compressed": (0, "file"),
    "np.savetxt": (0, "fname"),
    "json.dump": (1, "fp"),
    "pickle.dump": (1, "file"),
    "yaml.dump": (1, "stream"),
    "yaml.safe_dump": (1, "stream"),
    "shutil.copy": (1, "dst"),
    "shutil.copy2": (1, "dst"),
    "shutil.copyfile": (1, "dst"),
    "shutil.copytree": (1, "dst"),
    "shutil.move": (1, "dst"),
    "papermill.execute_notebook": (1, "output_path"),
}
for _numpy in [name for name in FUNCTION_SINKS if name.startswith("np.")]:
    FUNCTION_SINKS["numpy." + _numpy[3:]] = FUNCTION_SINKS[_numpy]
# Methods, whatever the receiver: (position, keyword) of the target, or None when the receiver is the target.
METHOD_SINKS: dict[str, tuple[int, str] | None] = {
    "write_text": None,
    "write_bytes": None,
    "save": (0, "fp"),
    "savefig": (0, "fname"),
    "to_csv": (0, "path_or_buf"),
    "to_json": (0, "path_or_buf"),
    "to_html": (0, "buf"),
    "to_markdown": (0, "buf"),
    "to_parquet": (0, "path"),
    "to_feather": (0, "path"),
    "to_pickle": (0, "path"),
    "to_excel": (0, "excel_writer"),
}
MODULE_OPENS = {"open", "io.open", "codecs.open", "gzip.open", "bz2.open", "lzma.open"}
READ_ONLY_OPENS = {"Image.open", "PIL.Image.open"}  # Pillow opens images for reading only
OS_WRITE_FLAGS = {"O_WRONLY", "O_RDWR", "O_CREAT", "O_APPEND", "O_TRUNC"}

TEMPORARY_CONTEXTS = {"atomic_path"}  # with atomic_path(target) as tmp: write tmp, renamed over target
HANDLE_CALLBACKS = {"atomic_write": (1, "write")}  # atomic_write(target, write): write(handle) on a temporary
MEMORY_BUFFERS = {"BytesIO", "StringIO", "io.BytesIO", "io.StringIO"}
PRIVATE_DIRECTORIES = {"TemporaryDirectory", "tempfile.TemporaryDirectory", "mkdtemp", "tempfile.mkdtemp"}
PATH_WRAPPERS = {"str", "Path", "pathlib.Path", "os.fspath"}
PATH_JOINS = {"os.path.join", "joinpath"}
RENAMES = {"os.replace", "os.rename"}

SCOPES = (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


def dotted(node: ast.AST) -> str | None:
    """`a.b.c` for a Name / Attribute chain, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def last_name(call: ast.Call) -> str | None:
    func = call.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def argument(call: ast.Call, position: int, keyword: str) -> ast.expr | None:
    for kw in call.keywords:
        if kw.arg == keyword:
            return kw.value
    positional = [a for a in call.args if not isinstance(a, ast.Starred)]
    return positional[position] if len(positional) == len(call.args) and position < len(positional) else None


def own_nodes(scope: ast.AST) -> Iterator[ast.AST]:
    """Nodes evaluated in `scope` itself, not inside the functions and lambdas it defines."""
    body = [scope.body] if isinstance(scope, ast.Lambda) else scope.body
    stack = list(body)
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, SCOPES):
            continue
        stack.extend(ast.iter_child_nodes(node))


def parameters(scope: ast.AST) -> list[ast.arg]:
    if isinstance(scope, ast.Module):
        return []
    args = scope.args
    return [*args.posonlyargs, *args.args, *([args.vararg] if args.vararg else []), *args.kwonlyargs] + (
        [args.kwarg] if args.kwarg else []
    )


@dataclass
class Scope:
    node: ast.AST
    parent: Scope | None
    bindings: dict[str, list[ast.AST]] = field(default_factory=dict)  # name -> the nodes that bind it
    renamed: set[str] = field(default_factory=set)  # names moved into place by os.replace / os.rename here

    def lookup(self, name: str) -> tuple[Scope, list[ast.AST]] | None:
        scope: Scope | None = self
        while scope is not None:
            if name in scope.bindings:
                return scope, scope.bindings[name]
            scope = scope.parent
        return None


@dataclass
class Finding:
    file: str
    line: int
    function: str
    code: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line} (in {self.function}): {self.code}"


class WriteScanner:
    """One module's writes whose target is not a temporary, an in-memory buffer or a private directory."""

    def __init__(self, tree: ast.Module, source: str, file: str, project_methods: dict[str, set[str]]) -> None:
        self.tree, self.source, self.file = tree, source, file
        self.project_methods = project_methods  # plantlib class name -> its method names
        self.scopes: dict[ast.AST, Scope] = {}
        self._build(tree, None)
        self.safe_parameters: set[ast.arg] = set()
        self._visiting: set[tuple[str, str, int]] = set()
        self._functions: dict[str, list[ast.AST]] = {}
        for node in ast.walk(tree):
            if isinstance(node, FUNCTIONS):
                self._functions.setdefault(node.name, []).append(node)

    # ------------------------------------------------------------------------------------------ scopes
    def _build(self, node: ast.AST, parent: Scope | None) -> None:
        scope = Scope(node, parent)
        self.scopes[node] = scope
        for param in parameters(node):
            scope.bindings.setdefault(param.arg, []).append(param)
        bound_by_with = set()
        for child in own_nodes(node):
            if isinstance(child, FUNCTIONS):
                scope.bindings.setdefault(child.name, []).append(child)
                self._build(child, scope)
            elif isinstance(child, ast.Lambda):
                self._build(child, scope)
            elif isinstance(child, ast.ClassDef):
                scope.bindings.setdefault(child.name, []).append(child)
            elif isinstance(child, (ast.With, ast.AsyncWith)):
                for item in child.items:
                    if isinstance(item.optional_vars, ast.Name):
                        scope.bindings.setdefault(item.optional_vars.id, []).append(item)
                        bound_by_with.add(id(item.optional_vars))
            elif isinstance(child, ast.Call) and dotted(child.func) in RENAMES and child.args:
                if isinstance(child.args[0], ast.Name):
                    scope.renamed.add(child.args[0].id)
            elif isinstance(child, ast.Name) and isinstance(child.ctx, ast.Store) and id(child) not in bound_by_with:
                scope.bindings.setdefault(child.id, []).append(self._binding_of(child, node))
            elif isinstance(child, (ast.Import, ast.ImportFrom)):
                for alias in child.names:
                    scope.bindings.setdefault((alias.asname or alias.name).split(".")[0], []).append(child)

    def _binding_of(self, name: ast.Name, scope_node: ast.AST) -> ast.AST:
        """The Assign (`name = value`) that binds `name`, or the Name itself for any other kind of binding."""
        for node in own_nodes(scope_node):
            if isinstance(node, ast.Assign) and any(target is name for target in node.targets):
                return node
            if isinstance(node, ast.AnnAssign) and node.target is name and node.value is not None:
                return node
        return name

    # ------------------------------------------------------------------------------------ name verdicts
    def _name_is(self, kind: str, name: str, scope: Scope) -> bool:
        found = scope.lookup(name)
        if found is None:
            return False
        owner, bindings = found
        if kind == "temporary" and name in owner.renamed:
            return True
        key = (kind, name, id(owner))
        if key in self._visiting:  # a = b; b = a: nothing establishes either
            return False
        self._visiting.add(key)
        try:
            return all(self._binding_is(kind, binding, owner) for binding in bindings)
        finally:
            self._visiting.discard(key)

    def _binding_is(self, kind: str, binding: ast.AST, scope: Scope) -> bool:
        if isinstance(binding, ast.arg):
            return kind == "temporary" and binding in self.safe_parameters
        if isinstance(binding, ast.withitem):
            context = binding.context_expr
            if not isinstance(context, ast.Call):
                return False
            name = dotted(context.func) or ""
            if kind == "temporary":
                return name.split(".")[-1] in TEMPORARY_CONTEXTS or self._opens_temporary(context, scope)
            return kind == "private" and name in PRIVATE_DIRECTORIES
        if isinstance(binding, (ast.Assign, ast.AnnAssign)):
            value = binding.value
            if kind == "temporary":
                is_buffer = isinstance(value, ast.Call) and dotted(value.func) in MEMORY_BUFFERS
                return is_buffer or self._opens_temporary(value, scope) or self.is_temporary(value, scope)
            return self.is_private(value, scope)
        return False

    def _opens_temporary(self, value: ast.expr, scope: Scope) -> bool:
        if isinstance(value, ast.Call) and dotted(value.func) in MODULE_OPENS and value.args:
            return self.is_temporary(value.args[0], scope)
        return False

    def is_temporary(self, expr: ast.expr, scope: Scope) -> bool:
        if isinstance(expr, ast.Name):
            return self._name_is("temporary", expr.id, scope)
        if isinstance(expr, ast.Call) and dotted(expr.func) in PATH_WRAPPERS and len(expr.args) == 1:
            return self.is_temporary(expr.args[0], scope)
        return False

    def is_private(self, expr: ast.expr, scope: Scope) -> bool:
        if isinstance(expr, ast.Name):
            return self._name_is("private", expr.id, scope)
        if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Div):
            return self.is_private(expr.left, scope)
        if isinstance(expr, ast.Call):
            name = dotted(expr.func) or ""
            if name in PRIVATE_DIRECTORIES:
                return True
            if (name in PATH_WRAPPERS or name in PATH_JOINS) and expr.args:
                return self.is_private(expr.args[0], scope)
            if isinstance(expr.func, ast.Attribute) and expr.func.attr in {"joinpath", "with_name", "with_suffix"}:
                return self.is_private(expr.func.value, scope)
        return False

    def acceptable(self, target: ast.expr, scope: Scope) -> bool:
        return self.is_temporary(target, scope) or self.is_private(target, scope)

    # ------------------------------------------------------------------------------------ parameters
    def _uses(self, function_name: str) -> list[tuple[ast.AST, Scope]] | None:
        """Every place the module uses functions of this name; None when one is used in a way not followed."""
        uses: list[tuple[ast.AST, Scope]] = []
        for scope in self.scopes.values():
            for node in own_nodes(scope.node):
                if isinstance(node, ast.Call) and last_name(node) == function_name:
                    uses.append((node, scope))
                elif isinstance(node, ast.Call) and last_name(node) in HANDLE_CALLBACKS:
                    callback = argument(node, *HANDLE_CALLBACKS[last_name(node)])
                    if isinstance(callback, ast.Name) and callback.id == function_name:
                        uses.append((callback, scope))
        called = {id(node.func) for node in ast.walk(self.tree) if isinstance(node, ast.Call)}
        handed = {id(use) for use, _ in uses if isinstance(use, ast.Name)}
        for node in ast.walk(self.tree):
            named = (isinstance(node, ast.Name) and node.id == function_name) or (
                isinstance(node, ast.Attribute) and node.attr == function_name
            )
            if named and isinstance(node.ctx, ast.Load) and id(node) not in called | handed:
                return None  # stored, passed on or returned: calls made elsewhere cannot be checked
        return uses

    def _parameter_is_temporary(self, function: ast.AST, index: int, param: ast.arg) -> bool:
        uses = self._uses(function.name)
        if not uses:
            return False
        for use, scope in uses:
            if isinstance(use, ast.Name):  # handed to atomic_write: the first parameter gets the handle
                if index != 0:
                    return False
                continue
            offset = (
                1
                if isinstance(use.func, ast.Attribute)
                and parameters(function)[:1]
                and (parameters(function)[0].arg in ("self", "cls"))
                else 0
            )
            value = argument(use, index - offset, param.arg) if index >= offset else None
            if value is None or not self.is_temporary(value, scope):
                return False
        return True

    def _settle_parameters(self) -> None:
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Call) and last_name(node) in HANDLE_CALLBACKS:
                callback = argument(node, *HANDLE_CALLBACKS[last_name(node)])
                if isinstance(callback, ast.Lambda) and parameters(callback):
                    self.safe_parameters.add(parameters(callback)[0])
        changed = True
        while changed:
            changed = False
            for functions in self._functions.values():
                for function in functions:
                    for index, param in enumerate(parameters(function)):
                        if param not in self.safe_parameters and self._parameter_is_temporary(function, index, param):
                            self.safe_parameters.add(param)
                            changed = True

    # ------------------------------------------------------------------------------------ writes
    def writes(self, call: ast.Call, scope: Scope) -> list[ast.expr] | None:
        """The file targets `call` writes to; None when it writes no file."""
        name = dotted(call.func) or ""
        if name in FUNCTION_SINKS:
            target = argument(call, *FUNCTION_SINKS[name])
            return None if target is None else [target]
        if name == "os.open":
            flags = call.args[1] if len(call.args) > 1 else None
            names = {n.attr if isinstance(n, ast.Attribute) else getattr(n, "id", "") for n in ast.walk(flags or call)}
            return [call.args[0]] if flags is not None and names & OS_WRITE_FLAGS else None
        if name in MODULE_OPENS:
            target, mode = argument(call, 0, "file"), argument(call, 1, "mode")
            return [target] if target is not None and _writing_mode(mode) else None
        if not isinstance(call.func, ast.Attribute) or name in READ_ONLY_OPENS:
            return None
        method, receiver = call.func.attr, call.func.value
        if method == "open":  # Path.open(mode)
            return [receiver] if _writing_mode(argument(call, 0, "mode")) else None
        if method not in METHOD_SINKS or self._project_method(receiver, method, scope):
            return None
        where = METHOD_SINKS[method]
        if where is None:
            return [receiver]
        target = argument(call, *where)
        return None if target is None else [target]

    def _project_method(self, receiver: ast.expr, method: str, scope: Scope) -> bool:
        """`receiver.method` is a plantlib method: `receiver` is a parameter annotated with a plantlib class."""
        if not isinstance(receiver, ast.Name):
            return False
        found = scope.lookup(receiver.id)
        if found is None:
            return False
        classes = set()
        for binding in found[1]:
            annotation = binding.annotation if isinstance(binding, (ast.arg, ast.AnnAssign)) else None
            if annotation is None:
                return False
            text = annotation.value if isinstance(annotation, ast.Constant) else ast.unparse(annotation)
            classes.add(str(text).split("|")[0].strip())
        return all(method in self.project_methods.get(c, set()) for c in classes)

    def findings(self) -> list[Finding]:
        self._settle_parameters()
        found = []
        for scope in self.scopes.values():
            for node in own_nodes(scope.node):
                if not isinstance(node, ast.Call):
                    continue
                targets = self.writes(node, scope)
                if targets is None or all(self.acceptable(t, scope) for t in targets):
                    continue
                function = getattr(scope.node, "name", "<lambda>" if isinstance(scope.node, ast.Lambda) else "")
                code = " ".join(line.strip() for line in ast.get_source_segment(self.source, node).splitlines())
                found.append(Finding(self.file, node.lineno, function or "<module>", code))
        return sorted(found, key=lambda f: f.line)


def _writing_mode(mode: ast.expr | None) -> bool:
    if mode is None:
        return False
    if isinstance(mode, ast.Constant) and isinstance(mode.value, str):
        return bool(set(mode.value) & set("wax+"))
    return True  # a mode computed at run time may write


def project_methods(trees: Iterable[ast.Module]) -> dict[str, set[str]]:
    methods: dict[str, set[str]] = {}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                methods.setdefault(node.name, set()).update(
                    item.name for item in node.body if isinstance(item, FUNCTIONS)
                )
    return methods


def scan_source(source: str, file: str = "<snippet>") -> list[Finding]:
    tree = ast.parse(source)
    return WriteScanner(tree, source, file, project_methods([tree])).findings()


def scan_folders(root: Path, folders: Iterable[str]) -> list[Finding]:
    sources = {p: p.read_text(encoding="utf-8") for folder in folders for p in sorted((root / folder).rglob("*.py"))}
    trees = {p: ast.parse(text, filename=str(p)) for p, text in sources.items()}
    methods = project_methods(trees.values())
    found = []
    for path, tree in trees.items():
        found += WriteScanner(tree, sources[path], path.relative_to(root).as_posix(), methods).findings()
    return found
