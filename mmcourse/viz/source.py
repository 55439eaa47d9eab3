"""`show(fn)`: the source code of a course function or class, inside the notebook that uses it.

A notebook never redefines a model the package provides; it shows the package's code instead, so
the reader sees exactly what runs.
"""
from __future__ import annotations

import inspect


def show(obj) -> None:
    """Display the source of `obj` (a function, class, method or module): highlighted with
    `IPython.display.Code` inside IPython/Jupyter, printed as plain text anywhere else."""
    try:
        source = inspect.getsource(obj)
    except (TypeError, OSError) as error:  # built-ins, C extensions, code typed at a prompt
        raise TypeError(f"obj has no Python source to show ({type(obj).__name__} {obj!r}): {error}") from None
    if _in_ipython():
        from IPython.display import Code, display

        display(Code(source, language="python"))
    else:
        print(source)


def _in_ipython() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None
