"""Batches: a JSONL file of requests run through the queues, results to JSONL, resumable."""

from agentqueue.batch.run import run_batch

__all__ = ["run_batch"]
