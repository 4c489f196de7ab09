"""Session bookkeeping (in-flight window, offline queue, resend) with a fake connection."""

from __future__ import annotations

from coordinator.broker import EmbeddedBroker
from coordinator.broker.packets import (
    Ack,
    Connack,
    Connect,
    PacketType,
    Publish,
    Suback,
    Subscribe,
    encode_connect,
)
from coordinator.broker.session import Message, Session, SessionLimits
from tests.fixtures.brokers import RawClient, mqtt_client


class FakeOutbox:
    def __init__(self) -> None:
        self.sent: list[tuple[str, object, int, bool]] = []

    def send_publish(self, message: Message, packet_id: int, dup: bool) -> None:
        self.sent.append(("publish", message.payload, packet_id, dup))

    def send_pubrel(self, packet_id: int) -> None:
        self.sent.append(("pubrel", None, packet_id, False))


def _session(**limits: int) -> tuple[Session, FakeOutbox]:
    session = Session("dev", clean=False, limits=SessionLimits(**limits))
    outbox = FakeOutbox()
    session.outbox = outbox
    return session, outbox


def test_inflight_window_holds_back_messages_until_acked() -> None:
    session, outbox = _session(max_inflight=2)

    for index in range(4):
        session.deliver(Message("t", b"%d" % index, qos=1))
    sent_before_ack = [payload for _, payload, _, _ in outbox.sent]
    session.on_puback(outbox.sent[0][2])

    assert sent_before_ack == [b"0", b"1"]
    assert [payload for _, payload, _, _ in outbox.sent] == [b"0", b"1", b"2"]
    assert (session.inflight, session.queued) == (2, 1)


def test_qos0_bypasses_the_window_and_is_dropped_offline() -> None:
    session, outbox = _session(max_inflight=1)
    session.deliver(Message("t", b"q1", qos=1))

    session.deliver(Message("t", b"q0", qos=0))
    session.outbox = None
    session.deliver(Message("t", b"lost", qos=0))

    assert [payload for _, payload, _, _ in outbox.sent] == [b"q1", b"q0"]
    assert session.queued == 0


def test_offline_queue_is_bounded_by_count_and_bytes() -> None:
    by_count, _ = _session(max_queued_messages=3)
    by_bytes, _ = _session(max_queued_bytes=10)
    by_count.outbox = by_bytes.outbox = None

    for _ in range(5):
        by_count.deliver(Message("t", b"x", qos=1))
        by_bytes.deliver(Message("t", b"12345678", qos=1))

    assert by_count.queued == 3
    assert by_bytes.queued == 1  # always room for one message, however large


def test_resume_resends_publish_with_dup_and_pubrel_for_released() -> None:
    session, outbox = _session()
    session.deliver(Message("t", b"one", qos=1))
    session.deliver(Message("t", b"two", qos=2))
    two_id = outbox.sent[1][2]
    session.on_pubrec(two_id)
    session.outbox = None
    session.deliver(Message("t", b"three", qos=1))  # queued while offline

    fresh = FakeOutbox()
    session.outbox = fresh
    session.resume()

    assert [(kind, payload, dup) for kind, payload, _, dup in fresh.sent] == [
        ("publish", b"one", True),
        ("pubrel", None, False),
        ("publish", b"three", False),
    ]
    session.on_pubcomp(two_id)
    assert session.inflight == 2


def test_packet_ids_skip_ids_still_in_flight() -> None:
    session, outbox = _session(max_inflight=70_000)

    for _ in range(65_535):
        session.deliver(Message("t", b"", qos=1))
    session.on_puback(500)
    session.deliver(Message("t", b"next", qos=1))

    assert outbox.sent[-1][2] == 500


def test_embedded_queue_limit_drops_newest_messages() -> None:
    with EmbeddedBroker(port=0, max_queued_messages=3) as broker:
        with mqtt_client(broker, "dev", clean_session=False) as device:
            device.subscribe_wait("q", 1)
        with mqtt_client(broker, "pub") as pub:
            for index in range(6):
                pub.publish_wait("q", b"%d" % index, qos=1)

        with mqtt_client(broker, "dev", clean_session=False) as device:
            delivered = device.collector.wait_for("q", 3)
            device.collector.expect_none("never", duration=0.2)
            total = len(device.collector.matching("q"))
    assert [m.payload for m in delivered] == [b"0", b"1", b"2"]
    assert total == 3


def test_embedded_inflight_window_on_the_wire() -> None:
    with EmbeddedBroker(port=0, max_inflight=2) as broker, RawClient(broker) as raw:
        raw.connect("dev")
        raw.send(Subscribe(1, (("w", 1),)))
        assert raw.recv() == Suback(1, (1,))
        with mqtt_client(broker, "pub") as pub:
            for index in range(3):
                pub.publish_wait("w", b"%d" % index, qos=1)

        first, second = raw.recv(), raw.recv()
        try:
            raw.recv(timeout=0.3)
            third_early = True
        except TimeoutError:
            third_early = False
        raw.send(Ack(PacketType.PUBACK, first.packet_id))
        third = raw.recv()

    assert isinstance(first, Publish) and isinstance(second, Publish)
    assert not third_early
    assert isinstance(third, Publish) and third.payload == b"2"


def test_embedded_accepts_150_simultaneous_connections() -> None:
    with EmbeddedBroker(port=0) as broker:
        clients = [RawClient(broker) for _ in range(150)]
        try:
            for index, raw in enumerate(clients):
                raw.send(encode_connect(Connect(f"c{index}")))
            connacks = [raw.recv() for raw in clients]
            count = broker.client_count
        finally:
            for raw in clients:
                raw.close()
    assert connacks == [Connack(False, 0)] * 150
    assert count == 150
