"""twistd plugin: names ``tlsproxy.tap`` by string so ``twistd --help`` imports nothing heavy."""

from twisted.application.service import ServiceMaker

tlsproxy = ServiceMaker(
    "tlsproxy",
    "tlsproxy.tap",
    "HTTPS in front of a plain-HTTP backend (TLS-terminating reverse proxy).",
    "tlsproxy",
)
