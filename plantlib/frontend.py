"""Is a Jupyter frontend that renders widgets watching this kernel? Widgets live, static output everywhere else.

A headless run (plain papermill, `jupyter nbconvert --execute`, `plantlib report`) saves widgets as empty
placeholders, so notebooks must know. What is true in every such run: no widget frontend ever connects. JupyterLab
and Notebook 7 open ipywidgets' control comm the moment they connect to a kernel, which ipywidgets records if its
comm targets are registered by then; the project's kernel (`plantlib kernel`) loads this module as an IPython
extension at start-up for exactly that. Any other kernel counts as headless: it gets static output, never
placeholders.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from plantlib.io import read_json, write_json

KERNEL_NAME = "plantlib"
KERNEL_DISPLAY_NAME = "Python (plantlib)"
EXTENSION = "plantlib.frontend"


def load_ipython_extension(shell: Any) -> None:
    """IPython extension hook: register ipywidgets' comm targets before any frontend connects."""
    import ipywidgets  # noqa: F401  (inside a kernel, importing it registers its comm targets)


def in_jupyter_kernel() -> bool:
    """True inside a Jupyter kernel (live or headless), False in a terminal or a plain Python process."""
    if "IPython" not in sys.modules:
        return False
    from IPython import get_ipython

    shell = get_ipython()
    return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"


def widget_frontend() -> bool:
    """True when JupyterLab (or another widget frontend) is connected to this kernel; False in headless runs."""
    if "ipywidgets" not in sys.modules or not in_jupyter_kernel():
        return False  # ipywidgets not loaded at start-up: a connecting frontend's control comm went unheard
    from ipywidgets import Widget

    # Set by ipywidgets when a frontend opens its control comm; ipywidgets offers no public accessor.
    return getattr(Widget, "_control_comm", None) is not None


def install_kernel(user: bool = False, name: str = KERNEL_NAME) -> Path:
    """Register this interpreter as the Jupyter kernel `name`, loading this module as an extension at start-up.

    `user=False` installs into this environment (what `papermill` and `plantlib report` of this checkout see);
    `user=True` into the user's Jupyter folder, so a JupyterLab from any environment lists it.
    """
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager

    with tempfile.TemporaryDirectory(prefix="plantlib-kernel-") as folder:
        spec = Path(write_kernel_spec(Path(folder) / name, extra_arguments=[f"--ext={EXTENSION}"]))
        description = read_json(spec / "kernel.json")
        description["display_name"] = KERNEL_DISPLAY_NAME
        description["argv"][0] = sys.executable
        write_json(spec / "kernel.json", description)
        target = KernelSpecManager().install_kernel_spec(
            str(spec), name, user=user, prefix=None if user else sys.prefix, replace=True
        )
    return Path(target)


def kernel_runs_this_interpreter(name: str = KERNEL_NAME) -> bool:
    """Whether kernel `name` exists and starts this very Python (not another checkout's or environment's)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        argv = KernelSpecManager().get_kernel_spec(name).argv
    except NoSuchKernel:
        return False
    try:
        return bool(argv) and Path(argv[0]).resolve() == Path(sys.executable).resolve()
    except OSError:
        return False


# JupyterLab's defaults for this environment: no news pop-up on first start and no update check (both would fetch
# from the internet, which the project never does unasked). The user's own settings still win over these.
LAB_SETTINGS = {"@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False}}


def install_lab_settings(prefix: str | Path = sys.prefix) -> Path:
    """Merge `LAB_SETTINGS` into this environment's JupyterLab `overrides.json` (other keys kept); its path."""
    target = Path(prefix) / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
    settings = read_json(target)
    for plugin, values in LAB_SETTINGS.items():
        settings[plugin] = {**settings.get(plugin, {}), **values}
    write_json(target, settings)
    return target
