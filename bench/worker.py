"""``python -m bench.worker <module:function> '<json kwargs>'``: run one measurement in a fresh process.

Used where a measurement needs a clean process (peak RSS, cold imports, cold caches). The result is printed as one
``BENCH_RESULT <json>`` line on stdout (:func:`bench.common.run_worker` parses it).
"""

from __future__ import annotations

import importlib
import json
import sys

from bench.common import RESULT_MARK, setup_environment


def main(argv: list[str]) -> None:
    """Import ``module``, call ``function(**kwargs)``, print the JSON result."""
    if len(argv) != 2:
        raise SystemExit("usage: python -m bench.worker <module:function> '<json kwargs>'")
    setup_environment()
    target, raw = argv
    module_name, func_name = target.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    result = func(**json.loads(raw))
    print(RESULT_MARK + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
