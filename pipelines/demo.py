"""``defi demo``: the main job on an embedded default. Not built yet: the curate pipeline lands
with its own issue; until then this says so instead of pretending."""

from __future__ import annotations

import sys


def run(args) -> int:
    sys.stderr.write(
        "defi demo: the end-to-end demo (generate videos -> curate -> query) is not built yet; "
        "`defi query`, `defi info` and `defi index` work on an existing corpus.\n"
    )
    return 1
