"""Package attributes imported on first use, so that `import jdl` stays light.

`import jdl` then imports neither JAX nor matplotlib: process-wide settings that must come
before JAX starts (`jdl.keep_freed_memory()`) can still be applied after it.
"""

import importlib
import importlib.util
from collections.abc import Callable, Mapping


def lazy_attributes(package: str, exports: Mapping[str, str]) -> tuple[Callable, Callable]:
    """`(__getattr__, __dir__)` for `package`: `exports` maps a public name to the module
    (relative to the package) that defines it; any other name may be a submodule."""

    def __getattr__(name: str):
        if name in exports:
            return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        if importlib.util.find_spec(f"{package}.{name}") is not None:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
