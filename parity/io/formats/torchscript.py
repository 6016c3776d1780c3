"""TorchScript archives (the official CLIP releases): the module tree in `data.pkl` as a state dict.

The archive's code is never compiled or run. Which attributes of a module are parameters or buffers
comes from the `__parameters__` / `__buffers__` lists of its class declaration, parsed as text by
`ast` (an inflated code file counts against the file's own size, like every inflated entry).
"""
from __future__ import annotations

import ast

from ...errors import CheckpointError
from .source import Stored
from .archive import Archive, ScriptObject

CODE_LIMIT = 1 << 24  # one code file: 16 MiB (a CLIP's largest is a few kB)


class Declarations:
    """`__parameters__` / `__buffers__` of each TorchScript class, read from its code file with `ast`."""

    def __init__(self, archive: Archive, prefix: str):
        self.archive, self.prefix, self.files = archive, prefix, {}

    def __call__(self, qualname: str) -> tuple[list, list] | None:
        module, _, name = qualname.rpartition(".")
        path = f"{self.prefix}code/{module.replace('.', '/')}.py"
        if path not in self.files:
            tree = None
            if path in self.archive.entries:
                try:  # parsed, never run
                    tree = ast.parse(self.archive.read(path, limit=CODE_LIMIT).decode("utf-8"))
                except (SyntaxError, UnicodeDecodeError, ValueError, RecursionError, MemoryError):
                    tree = None
            self.files[path] = tree
        tree = self.files[path]
        for node in (tree.body if tree else []):
            if isinstance(node, ast.ClassDef) and node.name == name:
                lists = {t.id: [e.value for e in stmt.value.elts if isinstance(e, ast.Constant)]
                         for stmt in node.body if isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.List)
                         for t in stmt.targets if isinstance(t, ast.Name)}
                if "__parameters__" in lists or "__buffers__" in lists:
                    return lists.get("__parameters__", []), lists.get("__buffers__", [])
        return None


def script_state(root: ScriptObject, declarations: Declarations, notes: list) -> dict:
    """A TorchScript module tree -> its state dict (parameters and buffers by dotted name)."""
    out: dict[str, Stored] = {}
    undeclared, skipped, seen = [], [], set()
    pending = [(root, "")]  # a loop, not recursion: the tree's depth is the file's to choose
    while pending:
        obj, prefix = pending.pop()
        if id(obj) in seen:
            raise CheckpointError("a TorchScript module that appears twice in its own tree")
        seen.add(id(obj))
        attrs = obj.state if isinstance(obj.state, dict) else {}
        declared = declarations(obj.qualname)
        if declared is None:
            undeclared.append(obj.qualname)
            names = [k for k, v in attrs.items() if isinstance(k, str) and isinstance(v, Stored)]
        else:  # parameters first, then buffers, as torch's state_dict() orders them
            names = [n for n in declared[0] + declared[1] if isinstance(n, str) and isinstance(attrs.get(n), Stored)]
        out.update({prefix + n: attrs[n] for n in names})
        children = []
        for key, value in attrs.items():
            if isinstance(value, ScriptObject) and isinstance(key, str):
                children.append((value, f"{prefix}{key}."))
            elif isinstance(value, Stored) and key not in names:
                skipped.append(f"{prefix}{key}")
        pending.extend(reversed(children))  # depth first, in declaration order, as torch walks it
    if undeclared:
        notes.append(f"{len(undeclared)} TorchScript classes without parameter/buffer declarations: "
                     "all their tensor attributes were taken as state")
    if skipped:
        notes.append(f"{len(skipped)} tensor attributes that are neither parameters nor buffers left out "
                     f"(as torch's state_dict() does): {', '.join(skipped[:5])}")
    return out
