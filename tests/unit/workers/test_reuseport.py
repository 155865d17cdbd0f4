"""tlsproxy.workers.reuseport: a listener's group of sockets, one per worker slot, as workers
die and are replaced (fake ports; the real SO_REUSEPORT groups are in tests/e2e)."""

from __future__ import annotations

import itertools

from tests.unit.workers.fakes import FakePort
from tlsproxy.workers.reuseport import ListenerGroup


def split_group(count: int = 2) -> tuple[ListenerGroup, list[FakePort]]:
    """A SO_REUSEPORT group of ``count`` fake sockets; the list collects every socket opened."""
    fds = itertools.count(10)
    opened = [FakePort(next(fds)) for _ in range(count)]

    def reopen() -> FakePort:
        opened.append(FakePort(next(fds)))
        return opened[-1]

    return ListenerGroup(opened[:], reopen=reopen), opened


def test_a_slot_without_a_worker_leaves_the_group_and_gets_a_new_socket_for_its_next() -> None:
    """Withdrawn: the slot's socket is closed (the kernel stops giving it connections); its next
    worker gets a new socket of the group, not reading in the supervisor."""
    group, opened = split_group()
    first, second = opened
    assert group.port_for(1) is first
    group.withdraw(1)
    assert not first.listening
    assert group.open == [second]
    assert group.port_for(1) is opened[-1]
    replacement = opened[-1]
    assert replacement not in (first, second)
    assert (replacement.listening, replacement.reading) == (True, False)
    assert group.open == [replacement, second]
    assert group.port_for(1) is replacement  # once


def test_the_last_socket_of_a_group_is_kept_so_the_port_stays_ours() -> None:
    """With every worker gone, one socket stays open (connections wait there for a worker)."""
    group, opened = split_group()
    group.withdraw(1)
    group.withdraw(2)
    assert opened[1].listening
    assert group.open == [opened[1]]


def test_a_shared_socket_is_never_withdrawn() -> None:
    """A unix or systemd socket is every worker's: one dying leaves it to the others."""
    shared = FakePort(7)
    group = ListenerGroup([shared])
    group.withdraw(2)
    assert shared.listening
    assert group.port_for(1) is group.port_for(2) is shared
