"""A research agent with two tools: a search on tool workers and a local note-taker.

    agentqueue worker --app examples.research:app --role agents
    agentqueue worker --app examples.research:app --role tools
    agentqueue call '/tool search {"query": "jump consistent hash"}' --session r1

With a real model (DASHSCOPE_API_KEY or OPENAI_BASE_URL set) the agent picks the tools itself;
the offline scripted model calls a tool when asked with `/tool NAME {json}`.
"""

from __future__ import annotations

from agentqueue import AgentContext, App

app = App("research")

# A tiny offline corpus, so the example runs without a network.
_CORPUS = {
    "jump consistent hash": (
        "Lamping & Veach (2014): maps keys to n buckets, moving ~1/n keys when n grows."
    ),
    "quorum queues": (
        "RabbitMQ's replicated FIFO queues, built on Raft; support single active consumer."
    ),
    "agentscope": "A framework for building LLM agents with tools, memory and tracing.",
}
_notes: dict[str, list[str]] = {}


@app.tool("search", timeout=20.0, idempotent=True)
async def search(query: str) -> str:
    """Search the knowledge base.

    Args:
        query: What to look for.
    """
    hits = [
        text for topic, text in _CORPUS.items() if topic in query.lower() or query.lower() in topic
    ]
    return "\n".join(hits) if hits else f"No results for {query!r}."


@app.tool("take_note", remote=False, timeout=5.0)
def take_note(session: str, note: str) -> str:
    """Keep a note for later in this research session.

    Args:
        session: The session the note belongs to.
        note: The note's text.
    """
    _notes.setdefault(session, []).append(note)
    return f"noted ({len(_notes[session])} notes so far)"


@app.agent("researcher")
def researcher(ctx: AgentContext):  # type: ignore[no-untyped-def]
    """Answers research questions with search and remembers notes."""
    return ctx.build_agent(
        "You are a careful researcher. Search before you answer; take notes of key facts.",
        tools=["search", "take_note"],
    )
