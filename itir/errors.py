"""Expected failures, said in one line: the CLI and `python app.py` share this."""

from __future__ import annotations

import sys
from collections.abc import Callable

from generation.spec import GenerationError

# Bad input, missing files or models, an index from another encoder: the message says what
# to do. Anything else is a bug and keeps its traceback.
EXPECTED = (ValueError, OSError, GenerationError)


def run_explained(job: Callable[[], int | None], prog: str = "itir") -> int:
    """Run `job`; an expected failure prints `prog: message` to stderr and returns 2."""
    try:
        return job() or 0
    except EXPECTED as e:
        print(f"{prog}: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__
