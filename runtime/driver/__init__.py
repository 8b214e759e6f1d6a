"""The driver: a program's view of the cluster. `core.DriverCore` is what the public API
calls; its IO thread (`io_thread`, `loop`) places tasks and actors (`place`, `bound`,
`relocate`), tracks results and retries (`results`), objects (`objects`, `nested_refs`)
and keeps its records in `records`.
"""
