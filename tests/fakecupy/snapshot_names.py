"""Write ``cupy_names.json``: the public names of the installed ``cupy`` package, for the stand-in.

Run with CuPy installed (it imports without a GPU), e.g. in a scratch virtual environment::

    python -m venv /tmp/cupy && /tmp/cupy/bin/pip install cupy-cuda12x
    /tmp/cupy/bin/python tests/fakecupy/snapshot_names.py

The file records, per namespace, each public name with the signature CuPy reports for it (``null`` where the
object is a ufunc or has no Python signature; ufuncs are listed with their number of inputs), so the stand-in
refuses a function, a method or a keyword argument that real CuPy does not have.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import cupy
import cupy.lib.stride_tricks

NAMESPACES = {
    "cupy": cupy,
    "cupy.ndarray": cupy.ndarray,
    "cupy.random": cupy.random,
    "cupy.random.Generator": cupy.random.Generator,
    "cupy.linalg": cupy.linalg,
    "cupy.lib.stride_tricks": cupy.lib.stride_tricks,
    "cupy.cuda": cupy.cuda,
    "cupy.cuda.runtime": cupy.cuda.runtime,
    "cupy.cuda.Device": cupy.cuda.Device,
    "cupy.cuda.Stream": cupy.cuda.Stream,
    "cupy.RawModule": cupy.RawModule,
    "cupy.RawKernel": cupy.RawKernel,
}


def describe(obj) -> dict:
    if isinstance(obj, cupy.ufunc):
        return {"ufunc": True, "nin": obj.nin, "nout": obj.nout}
    try:
        return {"signature": str(inspect.signature(obj))}
    except (TypeError, ValueError):
        return {"signature": None}


def main() -> None:
    snapshot = {"version": cupy.__version__, "namespaces": {}}
    for title, namespace in NAMESPACES.items():
        public = sorted(n for n in dir(namespace) if not n.startswith("_") or (
            n.startswith("__") and n.endswith("__") and isinstance(namespace, type)))
        snapshot["namespaces"][title] = {n: describe(getattr(namespace, n, None)) for n in public}
    out = Path(__file__).with_name("cupy_names.json")
    out.write_text(json.dumps(snapshot, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out}: CuPy {cupy.__version__}, "
          + ", ".join(f"{k} {len(v)}" for k, v in snapshot["namespaces"].items()))


if __name__ == "__main__":
    main()
