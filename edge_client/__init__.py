"""Board side of the toolkit: trains a TFLite model on local data, talks MQTT.

Imports only numpy, paho-mqtt, click and one TFLite interpreter package.

``edge_client`` is also the library the coordinator side shares: ``coordinator``,
``devices``, ``model_export`` (and ``bench``) may import exactly the modules in
:data:`SHARED_MODULES`, each through its public names (those in its ``__all__`` if it has
one, never a name starting with ``_``). Everything else here (the client's round loop,
local training, its state directory, ``fedge``'s options) belongs to the board alone and
may change without notice. ``tests/edge_client/test_import_rules.py`` enforces both rules.

The shared contract:

- ``edge_client.errors``: the root exception ``EdgeFLError`` and its families
  (``ConfigError``, ``DataError``, ``ModelError``, ``ProtocolError``, ...).
- ``edge_client.protocol``: everything on the wire (docs/protocol.md): topics, JSON
  messages, weight envelopes, chunking, deduplication, id checks and strict JSON. Import
  it from the package; its modules are not part of the contract.
- ``edge_client.transport``: the ``Transport`` interface, ``MqttTransport``,
  ``BrokerConfig``, ``Will`` and the in-memory bus for tests.
- ``edge_client.messaging``: raw MQTT messages to decoded protocol objects (``Inbox``,
  whose items are typed by topic: ``RoundReceived``, ``UpdateReceived``, ... all
  ``Incoming``) and chunked binary publishing (``BinaryPublisher``).
- ``edge_client.signing``: Ed25519 ``Signer`` / ``Verifier`` for models, announcements
  and control messages.
- ``edge_client.manifest``: the ``manifest.json`` beside every exported model.
- ``edge_client.trainable_model``: ``TrainableModel`` over an exported ``.tflite``.
- ``edge_client.runtime``: finding a TFLite interpreter.
- ``edge_client.data``: data sets, the registry of named data sets, normalization,
  partitions and batches. Import it from the package.
- ``edge_client.cli_support``: what both command lines share.
- ``edge_client.pacing``: ``ENV``, the variable through which the fleet simulator slows a
  simulated board down (docs/fleet-simulation.md).
- ``edge_client.secagg``: secure aggregation's primitives and masking arithmetic
  (docs/secure-aggregation.md). Import it from the package.
- ``edge_client.secure_round``: a board's side of one secure round (``SecureRound``,
  ``quantized_update``), shared so the load generator's virtual devices run the board's own
  stage code rather than a second implementation of the cryptography.
- ``edge_client.local_training``: a board's local training (``train_local``,
  ``RoundSettings``), shared so bench/async_numerics.py's virtual-clock fleet trains each
  update with the board's own loop.
- ``edge_client`` itself: ``__version__``.
"""

__version__ = "0.1.0"

SHARED_MODULES: tuple[str, ...] = (
    "edge_client",
    "edge_client.errors",
    "edge_client.protocol",
    "edge_client.transport",
    "edge_client.messaging",
    "edge_client.signing",
    "edge_client.manifest",
    "edge_client.trainable_model",
    "edge_client.runtime",
    "edge_client.data",
    "edge_client.cli_support",
    "edge_client.pacing",
    "edge_client.secagg",
    "edge_client.secure_round",
    "edge_client.local_training",
)
"""The modules other packages may import from ``edge_client`` (see the module docstring)."""
