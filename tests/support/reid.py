"""`python -m reid_tao` with the test-only backbone registered (tiny_backbone.py), for tests that run `reid` in
a subprocess with tiny_overrides. Lightning's DDP launcher re-runs this script per rank, so every rank has it.

    python tests/support/reid.py TASK OVERRIDE...
"""

import sys

import tiny_backbone

from reid_tao.cli import main

tiny_backbone.register()
sys.exit(main())
