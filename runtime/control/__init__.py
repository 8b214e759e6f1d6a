"""The control service: one per cluster, on the head (`service`). Its node and driver
records (`records`), the actor directory and KV (`directory`), the load report it builds
(`load`), draining (`drain`), what survives a restart (`persist`), and the small
synchronous client tools use (`client`).
"""
