"""Only on PYTHONPATH in tests/test_agent.py: the audit agent (run as ``python -m``) exits at once.

The app runs under opentelemetry-instrument, whose own sitecustomize comes first on PYTHONPATH and
so shadows this one; the agent is started without the launcher's entry, so it finds this one.
"""

import os
import sys

if sys.argv[:1] == ["-m"]:
    sys.stderr.write("agent_fails: this agent exits at start\n")
    sys.stderr.flush()
    os._exit(3)
