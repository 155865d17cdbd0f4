"""``--workers N``: a supervisor process and N worker processes sharing its listeners."""

from tlsproxy.workers.supervisor import Supervisor, build_supervisor

__all__ = ["Supervisor", "build_supervisor"]
