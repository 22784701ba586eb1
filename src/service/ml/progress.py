"""Training progress for whoever reads it: a live bar for a person, one line per epoch for a record.

A notebook executed headless (papermill and ``jupyter nbconvert --execute`` both run on
nbclient) is read afterwards, as the executed .ipynb and its HTML report. A bar there is noise:
as text, every redraw is stored as another stderr output; as an ipywidgets widget, it is stored
as a view whose text is the bar at 0% plus widget state that the HTML report can only draw by
fetching the widget library from a CDN. So a headless notebook gets no bar, and the epoch lines
(``bar.write``, on stdout) are its record. A person in JupyterLab gets the widget bar, a terminal
tqdm's text bar on stderr.

A kernel learns who sent the cell it runs from the execute request alone: nbclient sends
``allow_stdin`` false (nobody is there to answer ``input()``), JupyterLab, Notebook and VS Code
send it true. Should a frontend say otherwise, it gets a bar too many or too few; the epoch
lines are there either way.
"""

from __future__ import annotations

import sys
from importlib.util import find_spec
from typing import Any, Literal

from tqdm.std import tqdm

Frontend = Literal["terminal", "notebook", "headless"]


def frontend() -> Frontend:
    """Where this code runs: ``terminal`` outside a Jupyter kernel (a shell, a script, plain
    IPython), ``notebook`` in a kernel whose current cell came from an interactive frontend,
    ``headless`` in a kernel run by nbclient."""
    ipython = sys.modules.get("IPython")  # not imported: certainly not in a kernel
    kernel = getattr(ipython.get_ipython(), "kernel", None) if ipython else None
    if kernel is None:
        return "terminal"
    request = kernel.get_parent("shell") or {}
    return "notebook" if request.get("content", {}).get("allow_stdin") else "headless"


def progress_bar(total: int, *, enabled: bool = True, **options: Any) -> tqdm:
    """A tqdm bar over ``total`` steps for the frontend in use (see the module docstring);
    disabled, it draws nothing. ``options`` go to tqdm (``desc``, ``unit`` ...)."""
    where = frontend()
    if enabled and where == "notebook" and find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm as widget_bar

        return widget_bar(total=total, **options)
    if not enabled or where == "headless":
        disable: bool | None = True
    elif where == "terminal":
        disable = None  # tqdm draws no bar when stderr is not a TTY (a log file)
    else:
        disable = False  # a kernel without ipywidgets: JupyterLab redraws a text bar in place
    return tqdm(total=total, disable=disable, **options)
