"""Versioned Parquet tables besides `latents` (flags, rebalanced samples): one spec, schema and document.

Each table's columns are declared once; the Arrow schema written to Parquet and the JSON document
published in schemas/<name>.v<version>.json both come from that declaration, and a test keeps the
published files equal to the code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

METADATA_KEY = b"latentmill"


@dataclass(frozen=True)
class TableSpec:
    name: str
    version: int
    columns: tuple[tuple[str, pa.DataType, bool, str], ...]  # name, type, nullable, description

    def schema(self, metadata: dict[str, Any] | None = None) -> pa.Schema:
        fields = [pa.field(name, dtype, nullable=nullable, metadata={b"description": text.encode()})
                  for name, dtype, nullable, text in self.columns]
        meta = {"schema": self.name, "schema_version": self.version, **(metadata or {})}
        return pa.schema(fields, metadata={METADATA_KEY: json.dumps(meta, default=str).encode()})

    def document(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "metadata_key": METADATA_KEY.decode(),
                "columns": [{"name": name, "type": str(dtype), "nullable": nullable, "description": text}
                            for name, dtype, nullable, text in self.columns]}

    def names(self) -> list[str]:
        return [name for name, *_ in self.columns]

    def metadata(self, schema: pa.Schema) -> dict[str, Any]:
        """The `latentmill` metadata of a file of this table; ValueError naming what it is otherwise."""
        raw = (schema.metadata or {}).get(METADATA_KEY)
        meta = json.loads(raw) if raw else {}
        if meta.get("schema") != self.name:
            raise ValueError(f"not a latentmill {self.name} table (its metadata names {meta.get('schema')!r})")
        if int(meta.get("schema_version", -1)) > self.version:
            raise ValueError(f"a {self.name} table of schema version {meta.get('schema_version')}, newer than this "
                             f"latentmill reads ({self.version}); upgrade latentmill")
        return meta
