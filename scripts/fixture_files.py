"""Byte-reproducible safetensors fixtures: the one helper the fixture scripts share that needs
neither torch nor scikit-learn."""

import json


def canonical_header(path):
    """safetensors writes __metadata__ in hash-map order (differs run to run); rewrite the
    header with sorted metadata keys so the file is byte-for-byte reproducible. The tensor
    entries and data (offsets are relative to the data section) are unchanged."""
    with open(path, "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little") + h + raw[8 + n:])
