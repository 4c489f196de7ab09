"""An embedded MQTT 3.1.1 broker, so one command runs a whole job without Mosquitto.

Pure Python (asyncio, standard library only). Boards on the LAN connect to it like to
any broker; in production any standard broker (Mosquitto, EMQX, HiveMQ) replaces it.

>>> with EmbeddedBroker(port=0) as broker:  # doctest: +SKIP
...     print(broker.url)
mqtt://127.0.0.1:54321
"""

from __future__ import annotations

from coordinator.broker.server import MAX_PACKET_SIZE, BrokerError, EmbeddedBroker

__all__ = ["MAX_PACKET_SIZE", "BrokerError", "EmbeddedBroker"]
