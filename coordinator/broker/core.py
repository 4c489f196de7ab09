"""Broker state shared by all connections: sessions, subscriptions, retained messages.

Everything here runs on the broker's event loop thread, so no locks are needed.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Mapping

from coordinator.broker.connection import Connection
from coordinator.broker.packets import ConnackCode, Connect, Will
from coordinator.broker.session import Message, Session, SessionLimits
from coordinator.broker.topic_match import SubscriptionTree, topic_matches

logger = logging.getLogger(__name__)


class BrokerCore:
    """Routing and session bookkeeping of the embedded broker (one per listening run)."""

    def __init__(
        self,
        *,
        users: Mapping[str, str] | None,
        max_packet_size: int,
        limits: SessionLimits,
        connect_timeout: float = 10.0,  # seconds a new socket may take to send CONNECT
    ) -> None:
        self.users = dict(users) if users is not None else None
        self.max_packet_size = max_packet_size
        self.limits = limits
        self.connect_timeout = connect_timeout
        self.sessions: dict[str, Session] = {}
        self.retained: dict[str, Message] = {}
        self._subscriptions: SubscriptionTree[str] = SubscriptionTree()
        self._tasks: dict[asyncio.Task[None], Connection] = {}
        self._closing = False
        self.client_count = 0  # connected clients (accepted CONNECT); read from any thread

    # ------------------------------------------------------------ connections

    async def handle_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """``asyncio.start_server`` callback: serve one socket until it closes."""
        connection = Connection(self, reader, writer)
        task = asyncio.current_task()
        assert task is not None
        if self._closing:
            connection.abort()
            return
        self._tasks[task] = connection
        try:
            await connection.run()
        finally:
            self._tasks.pop(task, None)

    async def shutdown(self) -> None:
        """Drop every connection (no wills: the broker itself is going away)."""
        self._closing = True
        tasks = list(self._tasks)
        for task, connection in list(self._tasks.items()):
            connection.abort()
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self.sessions.clear()
        self.retained.clear()

    def authenticate(self, connect: Connect) -> ConnackCode:
        if self.users is None:
            return ConnackCode.ACCEPTED
        if connect.username is None:
            return ConnackCode.NOT_AUTHORIZED
        expected = self.users.get(connect.username)
        given = connect.password or b""
        # Compare even for unknown users so timing does not reveal which names exist.
        reference = expected.encode("utf-8") if expected is not None else b"\0" * 16
        matches = hmac.compare_digest(given, reference)
        if expected is None or connect.password is None or not matches:
            return ConnackCode.BAD_USERNAME_OR_PASSWORD
        return ConnackCode.ACCEPTED

    def attach(self, connection: Connection, client_id: str, clean: bool) -> tuple[Session, bool]:
        """Bind ``connection`` to the session of ``client_id``; returns (session, present)."""
        session = self.sessions.get(client_id)
        if session is not None and session.outbox is not None:
            old = session.outbox
            logger.info(
                "client id %r connected again from %s: closing %r", client_id, connection.peer, old
            )
            session.outbox = None
            self.client_count -= 1
            will = old.kick() if isinstance(old, Connection) else None
            # Like Mosquitto: the old connection's will goes out unless both the old and
            # the new connection keep a persistent session (then the session continues).
            if will is not None and (clean or session.clean):
                self.publish(Message(will.topic, will.payload, will.qos, will.retain))
        if session is not None and (clean or session.clean):
            self._drop_session(session)  # a clean session lives only as long as its connection
            session = None
        present = session is not None
        if session is None:
            session = Session(client_id, clean, self.limits)
            self.sessions[client_id] = session
        session.outbox = connection
        self.client_count += 1
        return session, present

    def detach(self, connection: Connection, will: Will | None) -> None:
        """The connection ended; publish its will unless it said DISCONNECT."""
        session = connection.session
        if session is not None and session.outbox is connection:
            session.outbox = None
            self.client_count -= 1
            if session.clean:
                self._drop_session(session)
        if will is not None and not self._closing:
            logger.debug("publishing the will of %r on %r", connection, will.topic)
            self.publish(Message(will.topic, will.payload, will.qos, will.retain))

    def _drop_session(self, session: Session) -> None:
        for topic_filter in session.subscriptions:
            self._subscriptions.remove(topic_filter, session.client_id)
        session.subscriptions.clear()
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]

    # ------------------------------------------------------------ routing

    def subscribe(self, session: Session, topic_filter: str, qos: int) -> None:
        session.subscriptions[topic_filter] = qos
        self._subscriptions.add(topic_filter, session.client_id, qos)

    def unsubscribe(self, session: Session, topic_filter: str) -> None:
        if session.subscriptions.pop(topic_filter, None) is not None:
            self._subscriptions.remove(topic_filter, session.client_id)

    def publish(self, message: Message) -> None:
        """Route an application message (from a client or a will) to every subscriber."""
        if message.retain:
            if message.payload:
                self.retained[message.topic] = message
            else:
                self.retained.pop(message.topic, None)  # empty retained payload deletes
        for client_id, granted in self._subscriptions.match(message.topic).items():
            session = self.sessions.get(client_id)
            if session is None:
                continue
            # Established subscriptions always get RETAIN 0 (spec 3.3.1.3).
            qos = min(message.qos, granted)
            session.deliver(Message(message.topic, message.payload, qos, retain=False))

    def retained_matching(self, topic_filter: str) -> list[Message]:
        return [msg for topic, msg in self.retained.items() if topic_matches(topic_filter, topic)]
