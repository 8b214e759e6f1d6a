"""What runtime processes say to each other: frames, sockets and CurveZMQ authentication
(`frames`), and the driver-to-actor sync channel on one host (`sync_channel`).
"""
