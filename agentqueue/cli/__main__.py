"""`python -m agentqueue.cli`: the `agentqueue` command."""

import sys

from agentqueue.cli.main import main

sys.exit(main())
