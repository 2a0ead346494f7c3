"""Serialized exports that say when they are corrupt: an envelope around JAX's bytes.

`Graph.export(...)` gives a `jax.export.Exported`; its own `.serialize()` bytes carry no
checksum, so a damaged file fails deep inside JAX's flatbuffer reader (`struct.error`,
`IndexError`, a JAX runtime error at call time) or, for a flipped byte in a constant, not at
all. `serialize_export` wraps those bytes as

    magic (16 bytes) | format version (u16) | CRC-32 of the payload (u32) | length (u64) | payload

(little-endian), and `deserialize_export` checks each field before JAX reads the payload, so
every bad input gets one `ExportError` naming what is wrong: not an adplugin export, another
format version, truncated, or corrupt. Bare JAX bytes are accepted too, with JAX's failures
reported the same way.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import jax
import jax.export

from adplugin._errors import ExportError, message

MAGIC = b"adplugin-export\0"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<16sHIQ")


def serialize_export(exported: Any) -> bytes:
    """The bytes of `exported` (a `jax.export.Exported`, as `Graph.export` gives) inside a
    checked envelope; `deserialize_export` reads them back."""
    if not isinstance(exported, jax.export.Exported):
        raise TypeError(message("serialize_export", "not an export", type(exported).__name__,
                                "a jax.export.Exported", "pass what Graph.export returned"))
    payload = bytes(exported.serialize())
    return _HEADER.pack(MAGIC, FORMAT_VERSION, zlib.crc32(payload), len(payload)) + payload


def deserialize_export(blob: bytes | bytearray | memoryview) -> Any:
    """The `jax.export.Exported` in `blob` (from `serialize_export`, or bare
    `Exported.serialize()` bytes), checked: raises `ExportError` when it is corrupt,
    truncated, of another format version or not an export at all."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise TypeError(message("deserialize_export", "the serialized export is not bytes",
                                type(blob).__name__, "bytes from ap.serialize_export",
                                "read the file in binary mode ('rb')"))
    data = bytes(blob)
    if data.startswith(MAGIC[:8]):
        payload = _unwrap(data)
        where = "the export's payload"
    else:
        payload = data
        where = "the bytes (no adplugin envelope: bare jax.export bytes?)"
    return _read_payload(payload, where)


def _unwrap(data: bytes) -> bytes:
    if len(data) < _HEADER.size:
        raise _corrupt(f"the export is truncated: {len(data)} bytes, shorter than its "
                       f"{_HEADER.size}-byte header")
    magic, version, crc, length = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise _corrupt(f"the export's magic tag is damaged ({magic!r})")
    if version != FORMAT_VERSION:
        raise ExportError(message(
            "deserialize_export", "the export is of another format version",
            f"format version {version}", f"format version {FORMAT_VERSION}",
            "export the graph again with this adplugin version (or load it with the adplugin "
            "version that wrote it)"))
    payload = data[_HEADER.size:]
    if len(payload) != length:
        raise _corrupt(f"the export is truncated or padded: its header says {length} payload "
                       f"bytes, {len(payload)} follow")
    if zlib.crc32(payload) != crc:
        raise _corrupt("the export's checksum does not match its bytes (a damaged copy)")
    return payload


def _read_payload(payload: bytes, where: str) -> Any:
    try:
        exported = jax.export.deserialize(bytearray(payload))
        exported.mlir_module()  # parse the StableHLO now, not at the first call
    except Exception as e:  # JAX's readers fail with struct.error, IndexError, runtime errors
        raise _corrupt(f"JAX could not read {where}: {type(e).__name__}: {str(e)[:120]}") \
            from e
    return exported


def _corrupt(problem: str) -> ExportError:
    return ExportError(message(
        "deserialize_export", problem, "a corrupt or foreign serialized export",
        "bytes written by ap.serialize_export (or jax.export's Exported.serialize)",
        "export the graph again (Graph.export, then ap.serialize_export) and copy the file "
        "in binary mode"))
