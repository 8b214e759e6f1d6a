"""Bringing one node to up-to-date: the stage machine (`stages`), each stage's commands
in one remote shell (`command_batch`), the CommandRunner interface and its Result
(`command_runner`), what a cluster's bootstraps share (`node_context`), launch hashes
(`hashing`) and stage tags (`tag_writer`).
"""
