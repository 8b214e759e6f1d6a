"""corral ships itself to the nodes: learn the node's platform, build (once, cached) a
wheelhouse of this corral and its dependencies for that platform, upload it only when the
node lacks it, and install it offline into an environment on the node that every command
the launcher runs there sees first.

    platform.py   NodePlatform: what the first SSH round trip learns of a node
    wheelhouse.py build_wheelhouse(platform, extras) -> Wheelhouse (cached by content hash)
"""
