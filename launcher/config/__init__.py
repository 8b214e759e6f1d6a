"""The cluster YAML: limits before reading (`limits`), reading with positions
(`locate`), defaults and Ray's aliases (`defaults`), JSON Schema (`schema`), cross
checks (`checks`), and the frozen normalised result (`load.load_config` -> `model`).
"""
