"""Board side of the toolkit: trains a TFLite model on local data, talks MQTT.

Imports only numpy, paho-mqtt, click and one TFLite interpreter package.
"""

__version__ = "0.1.0"
