"""edgetpud's built-in plugins, registered through the `edgetpud.plugins` entry points.

Sources: mqtt, directory, synthetic, camera. Postprocessors: classify, detect,
segment, raw. Each module holds one plugin class and its `Config`.
"""
