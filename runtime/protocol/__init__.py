"""What runtime processes say to each other: frames, sockets and CurveZMQ authentication
(`frames`), every message kind (`kinds`), requests to the control service and their
typed failures (`rpc`), the protocol version checked at registration (`version`), the
load report the autoscaler reads (`load`), and the driver-to-actor sync channel on one
host (`sync_channel`).
"""
