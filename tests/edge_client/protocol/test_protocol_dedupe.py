"""UpdateDeduper: duplicates recognised, memory bounded by rounds."""

from __future__ import annotations

import numpy as np

from edge_client.protocol import UpdateDeduper, UpdateKey, decode, encode_weights

SHA = "b" * 64


def test_duplicate_update_is_recognised() -> None:
    # Prepare
    deduper = UpdateDeduper()
    key = UpdateKey("demo", 1, "pi-01", SHA)

    # Execute
    first, second = deduper.add(key), deduper.add(("demo", 1, "pi-01", SHA))

    # Assert
    assert (first, second) == (True, False)
    assert deduper.seen(key)
    assert key in deduper
    assert not deduper.seen(UpdateKey("demo", 1, "pi-01", "c" * 64))
    assert not deduper.seen(UpdateKey("demo", 2, "pi-01", SHA))
    assert not deduper.seen(UpdateKey("other", 1, "pi-01", SHA))


def test_key_of_a_decoded_envelope() -> None:
    payload = encode_weights(
        {"w": np.ones(3, np.float32)}, kind="update", job="demo", round=2, sender="pi-01"
    )
    envelope = decode(payload)

    assert UpdateKey.of(envelope) == ("demo", 2, "pi-01", envelope.sha256)


def test_old_rounds_are_forgotten() -> None:
    # Prepare
    deduper = UpdateDeduper(keep_rounds=2)
    for round_ in range(10):
        for device in ("a", "b", "c"):
            deduper.add(UpdateKey("demo", round_, device, SHA))

    # Execute
    too_old = deduper.add(UpdateKey("demo", 3, "z", SHA))

    # Assert
    assert len(deduper) == 6  # rounds 8 and 9 only
    assert not deduper.seen(UpdateKey("demo", 7, "a", SHA))
    assert deduper.seen(UpdateKey("demo", 8, "a", SHA))
    assert too_old is False


def test_jobs_are_bounded_independently_and_can_be_forgotten() -> None:
    deduper = UpdateDeduper(keep_rounds=1)
    deduper.add(UpdateKey("a", 5, "d", SHA))
    deduper.add(UpdateKey("b", 1, "d", SHA))

    assert deduper.seen(UpdateKey("a", 5, "d", SHA))
    deduper.forget_job("a")
    assert not deduper.seen(UpdateKey("a", 5, "d", SHA))
    assert len(deduper) == 1
