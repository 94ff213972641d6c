"""Shared pieces of lorafarm: settings, wire schemas, Redis keys, errors, Hub metadata, the queue protocol.

Nothing here imports torch or fastapi.
"""
