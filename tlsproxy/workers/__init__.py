"""``--workers N``: a supervisor process (:mod:`.supervisor`) and N worker processes
(:mod:`.worker`) sharing its listeners.

Nothing is imported here: a worker starts as ``python -m tlsproxy.workers`` and needs only
its own modules, not the supervisor's.
"""
