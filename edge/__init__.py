"""Lineside line-side daemon: scores frames with a deployed bundle and publishes verdicts over MQTT.

Imports no torch: the device installs numpy, pillow, pydantic, paho-mqtt and one runtime.
"""

__version__ = "0.1.0"
