"""The snapshot of the real ``cupy`` package's public names (``cupy_names.json``) and checks against it."""

from __future__ import annotations

import inspect
import json
from functools import cache
from pathlib import Path

_SNAPSHOT = json.loads(Path(__file__).with_name("cupy_names.json").read_text())
VERSION: str = _SNAPSHOT["version"]
NAMESPACES: dict[str, dict] = _SNAPSHOT["namespaces"]


def has(namespace: str, name: str) -> bool:
    return name in NAMESPACES[namespace]


def require(namespace: str, name: str) -> None:
    """Raise ``AttributeError`` (as CuPy would) for a name the real ``namespace`` does not have."""
    if name not in NAMESPACES[namespace]:
        raise AttributeError(f"{namespace} (CuPy {VERSION}) has no attribute {name!r}")


def check_defined(namespace: str, defined: set[str]) -> None:
    """Fail at import when the stand-in defines a public name that real CuPy lacks."""
    extra = sorted(n for n in defined if n not in NAMESPACES[namespace])
    if extra:
        raise ImportError(f"fakecupy defines names that {namespace} lacks: {extra}")


@cache
def signature(namespace: str, name: str) -> inspect.Signature | None:
    """CuPy's signature for ``namespace.name``, or ``None`` where CuPy reports none (ufuncs, Cython)."""
    text = NAMESPACES[namespace].get(name, {}).get("signature")
    if not text:
        return None
    try:
        return _parse(text)
    except SyntaxError:
        return None


def _parse(text: str) -> inspect.Signature:
    """An ``inspect.Signature`` from its text; defaults (which may not be valid Python) become ``None``."""
    params = []
    scope: dict = {}
    body = text.strip()[1:-1]
    # Replace every default by None: only the parameter names and kinds matter for the check.
    depth, start, pieces = 0, 0, []
    for k, ch in enumerate(body):
        if ch in "([{<":
            depth += 1
        elif ch in ")]}>":
            depth -= 1
        elif ch == "," and depth == 0:
            pieces.append(body[start:k])
            start = k + 1
    pieces.append(body[start:])
    for piece in pieces:
        piece = piece.strip()
        if not piece:
            continue
        if "=" in piece and not piece.startswith("*"):
            piece = piece.split("=", 1)[0].strip() + "=None"
        params.append(piece)
    exec(f"def f({', '.join(params)}): pass", scope)  # names and kinds only; no defaults are evaluated
    return inspect.signature(scope["f"])


def check_call(namespace: str, name: str, args: tuple, kwargs: dict) -> None:
    """Raise ``TypeError`` when CuPy's ``namespace.name`` would not accept these arguments."""
    sig = signature(namespace, name)
    if sig is None:
        return
    try:
        sig.bind(*args, **kwargs)
    except TypeError as e:
        raise TypeError(f"cupy {name}{sig}: {e}") from None
