"""What runtime processes say to each other: frames, sockets and CurveZMQ authentication
(`frames`), and the driver-to-actor sync channel on one host (`sync_channel`); every
message kind (`kinds.Kind`) and the record each carries: tasks and their results
(`tasks`), objects (`objects`), a worker and its agent (`workers`), the control
service's requests and replies (`rpc`); `codec.decode` turns a received header into
its record.
"""
