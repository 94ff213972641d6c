"""The HTTP front of lorafarm: resolves a repo on the Hub, queues the job on its base's pool, waits.

Nothing here imports torch or diffusers.
"""
