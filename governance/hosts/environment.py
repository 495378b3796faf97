"""The environment host adapters give the processes they start. No Django here.

A worker's environment holds the registry's own secrets (SECRET_KEY, DATABASE_URL, AWS_*) and every target's
`env:` credential. A model server runs the target's command (third-party code) and can read all of it, also
from /proc/<pid>/environ, so children get an allow-list, never a copy of the worker's environment.
"""

import os
from collections.abc import Iterable

# What any program needs to run as the worker would run it: where programs and libraries are, locale, time zone,
# temporary files, the Python environment.
BASE = frozenset({"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV"})
BASE_PREFIXES = ("LC_",)


def child_env(extra: Iterable[str] = ()) -> dict[str, str]:
    """The worker's values of BASE, LC_* and `extra` (those it has); nothing else."""
    names = BASE | set(extra)
    return {k: v for k, v in os.environ.items() if k in names or k.startswith(BASE_PREFIXES)}
