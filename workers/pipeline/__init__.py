"""The event pipeline: ordered stages with one middleware seam (see `stages.py`)."""

from agentqueue.workers.pipeline.event import Event, Next, Outcome, Settler
from agentqueue.workers.pipeline.middleware import Middleware
from agentqueue.workers.pipeline.pipeline import Pipeline

__all__ = ["Event", "Middleware", "Next", "Outcome", "Pipeline", "Settler"]
