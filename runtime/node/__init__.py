"""A node's runtime processes as a whole: starting them (`startup`), the session
directory (`session`), keys (`keys`), the head's supervisor (`supervisor`,
`supervision`, `health`), fate-sharing (`fate`), process inspection (`processes`),
GPUs (`gpus`), ipc directories and files only this user controls (`private_paths`).
"""
