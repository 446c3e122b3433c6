"""edgetpud: keeps TensorFlow Lite models served on Coral Edge TPUs, over MQTT."""

__version__ = "0.1.0"
