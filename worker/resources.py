"""Where the files that ship with the package are: the SQL migrations and default templates.

A built wheel carries the repository's top-level `sql/` and `templates/` inside the
package (`worker/sql`, `worker/templates`, mapped by the build backend); an editable
install of a checkout reads them where they are, beside the package.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parent.parent


def bundled(name: str) -> Path:
    """The folder `name` (`sql` or `templates`) shipped with this installation."""
    packaged = Path(str(resources.files("worker") / name))
    return packaged if packaged.is_dir() else _CHECKOUT / name
