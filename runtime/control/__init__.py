"""The control service: one per cluster, on the head (`service`). Node table, resource
view, actors, draining (`drain`), what survives a restart (`persist`), and the small
synchronous client tools use (`client`).
"""
