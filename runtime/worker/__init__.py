"""A worker process (`main`): runs tasks, or hosts one actor, for its node agent.
"""
