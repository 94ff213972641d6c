"""Shared pieces of lorafarm: settings, wire schemas, Redis keys, errors, Hub metadata, queues.

Nothing here imports torch or fastapi.
"""
