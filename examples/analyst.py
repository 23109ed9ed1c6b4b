"""A data analyst whose Python runs in a per-session sandbox (an IPython kernel under bwrap).

Turn 1 writes a CSV into the session's workspace and loads it in Python; turn 2 answers from
the variables turn 1 left in the kernel. Offline with the scripted model (`agentqueue demo
--sandbox`), whose `/tool NAME {json}` convention calls a tool; a real model picks the calls.

agentqueue worker --app examples.analyst:app --role agents
agentqueue worker --app examples.analyst:app --role tools
agentqueue call '/tool run_ipython_cell {"code": "1 + 1"}' --session s1
"""

from __future__ import annotations

import json

from agentqueue import AgentContext, App

app = App("analyst")
app.sandbox_tools("base", "filesystem", pool_size=1)

LOAD = (
    "import csv\n"
    "with open('sales.csv', 'w') as f:\n"
    "    f.write('region,amount\\nnorth,120\\nsouth,80\\nnorth,50\\n')\n"
    "rows = list(csv.DictReader(open('sales.csv')))\n"
    "print(len(rows), 'rows loaded')"
)
ASK = "sum(int(r['amount']) for r in rows if r['region'] == 'north')"
# The two turns of the demo: the second needs `rows` from the first.
TURNS = [
    "/tool run_ipython_cell " + json.dumps({"code": LOAD}),
    "/tool run_ipython_cell " + json.dumps({"code": ASK}),
]


@app.agent("analyst")
def analyst_agent(ctx: AgentContext):  # type: ignore[no-untyped-def]
    """Analyses data files with Python in the session's sandbox."""
    return ctx.build_agent(
        "You are a data analyst. Write files with write_file and analyse them with"
        " run_ipython_cell; variables stay in the kernel across the conversation.",
        tools=["run_ipython_cell", "run_shell_command", "read_file", "write_file"],
    )
