"""What runtime processes say to each other: frames, sockets and CurveZMQ authentication
(`frames`), and the driver-to-actor sync channel on one host (`sync_channel`); every
message kind (`kinds.Kind`) and the record each carries: tasks and their results
(`tasks`), objects (`objects`), a worker and its agent (`workers`), the control
service's requests, replies and typed failures (`rpc`), the load report the autoscaler
reads (`load`); `codec.decode` turns a received header into its record, and the
protocol version is checked at registration (`version`).
"""
