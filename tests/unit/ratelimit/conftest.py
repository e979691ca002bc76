from __future__ import annotations

import sys
from pathlib import Path

# rl_cases (the shared table) and rl_helpers import as top-level modules, here and in
# tests/integration/test_ratelimit_lua.py and tests/unit/stages/test_ratelimit.py.
sys.path.insert(0, str(Path(__file__).parent))
