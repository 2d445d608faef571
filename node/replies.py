"""Server packets with fixed meaning: the error replies, the "unknown job"
status replies and job assignments, built in one place (the cluster sends
the same unknown-job reply when the node that held a job is gone)."""

from __future__ import annotations

from typing import Final

from node import protocol as P

NOT_FOUND_DATA: Final = P.error_packet(b"JOB_NOT_FOUND", b"Job does not exist on server")
NOT_FOUND_RESULT: Final = P.error_packet(b"JOB_NOT_FOUND", b"Job given in work result not found")
NOT_FOUND_EXC: Final = P.error_packet(
    b"JOB_NOT_FOUND", b"An exception was received for a job that does not exist")
HANDLE_TOO_LARGE: Final = P.error_packet(
    b"ARGUMENT_TOO_LARGE",
    b"Error occurred due to GEARMAND_JOB_HANDLE_SIZE being too small from snprintf")
UNIQUE_TOO_LARGE: Final = P.error_packet(b"ARGUMENT_TOO_LARGE", b"Unique value too large")
QUEUE_FULL: Final = P.error_packet(b"QUEUE_ERROR", b"Job queue is full")
UNKNOWN_OPTION: Final = P.error_packet(b"UNKNOWN_OPTION",
                                       b"Server does not recognize given option")
EPOCH_OUT_OF_RANGE: Final = P.error_packet(b"INVALID_ARGUMENT", b"Epoch time out of range")


def unknown_status(handle: bytes) -> bytes:
    """STATUS_RES for a handle no job has (not known, not running, 0/0)."""
    return P.packet(P.STATUS_RES, handle + b"\x000\x000\x000\x000")


def unknown_status_unique(unique: bytes) -> bytes:
    """STATUS_RES_UNIQUE for a unique no job has (and no client waits on)."""
    return P.packet(P.STATUS_RES_UNIQUE, unique + b"\x000\x000\x000\x000\x000")


def assignment_packet(kind: int, handle: bytes, fn: bytes, unique: bytes, reducer: bytes,
                      payload: bytes) -> bytes:
    """JOB_ASSIGN, JOB_ASSIGN_UNIQ or JOB_ASSIGN_ALL, as the worker's grab asked."""
    if kind == P.JOB_ASSIGN:
        return P.packet(P.JOB_ASSIGN, b"%s\0%s\0%s" % (handle, fn, payload))
    if kind == P.JOB_ASSIGN_ALL and reducer:
        return P.packet(P.JOB_ASSIGN_ALL, b"%s\0%s\0%s\0%s\0%s" % (
            handle, fn, unique, reducer, payload))
    return P.packet(P.JOB_ASSIGN_UNIQ, b"%s\0%s\0%s\0%s" % (handle, fn, unique, payload))
