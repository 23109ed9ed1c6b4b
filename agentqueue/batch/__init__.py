"""Batches: a JSONL file of requests run through the queues, results to JSONL, resumable."""
