"""Reaching nodes over SSH: the user's own set-up (`user_config`, `auth`, `keyfile`),
pooled connections (`pool`), pinned host keys (`host_keys`), one command session per
connection (`shell`, `shell_server`), running commands (`execute`, `runner`), files
(`file_sync`) and interactive terminals (`terminal`).
"""
