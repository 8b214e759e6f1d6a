"""The node agent: one per node (`main` is its process entry, `service.NodeAgent` its
logic). It runs worker processes (`workers`, `worker_bound`, `bound`, `gpu_ids`) and
holds the node's objects (`store`, `objects`, `spill`, `store_memory`).
"""
