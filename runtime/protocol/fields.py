"""Turning a received header (a plain tuple) back into its record: shared by the record
modules (runtime.protocol.tasks, objects, workers)."""
from __future__ import annotations


_tuple_new = tuple.__new__


def record_of(cls, header, what: str):
    """cls(*header), or ValueError naming `what` when the header is not a tuple (or
    list) of cls's fields. Trailing fields with defaults may be left out. A dict of
    its fields by name is read too: what a hand-built message (a tool's, a test's)
    sends; senders in corral send the tuple.

    Hot path: a tuple with every field becomes the record without a call to cls
    (what NamedTuple._make does, minus its call)."""
    header_type = type(header)
    if header_type is tuple or header_type is list:
        if len(header) == len(cls._fields):
            return _tuple_new(cls, header)
        try:
            return cls(*header)
        except TypeError:
            raise ValueError(f"{what} has {len(header)} fields, not those of "
                             f"{cls.__name__}{cls._fields}") from None
    if header_type is dict:
        try:
            return cls(**header)
        except TypeError:
            raise ValueError(f"{what} has the fields {sorted(header)!r:.200}, not those "
                             f"of {cls.__name__}{cls._fields}") from None
    raise ValueError(f"{what} is {header_type.__name__}, not a tuple")
