"""tlsproxy: HTTPS in front of any plain-HTTP app."""

__version__ = "0.1.0"
