"""itir app: build the engine for a profile and launch the chat UI (also the Space entry).

    python app.py                     # offline world profile
    ITIR_PROFILE=clip-sdturbo python app.py
"""

import sys

from itir.serve import build_app, main  # noqa: F401  (build_app: the demo without launching)

if __name__ == "__main__":
    sys.exit(main())
