"""The published schema files match the code that writes the stores."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.store.schema import SCHEMA_VERSION, latents_schema, schema_document, store_metadata

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"


def test_published_json_schema_matches_the_code():
    published = json.loads((SCHEMAS / f"latents.v{SCHEMA_VERSION}.json").read_text())
    assert published == schema_document(), "regenerate schemas/latents.v1.json from schema_document()"


def test_schema_documentation_lists_every_column():
    text = (SCHEMAS / "README.md").read_text()
    for column in schema_document()["columns"]:
        assert f"`{column['name']}`" in text, column["name"]


def test_latent_columns_have_the_generator_shape_and_requested_dtype():
    schema = latents_schema(18, 512, latent_dtype="float16", metadata={"generator": "ffhq.pkl"})
    assert schema.field("w_refined").type == pa.list_(pa.float16(), 18 * 512)
    meta = store_metadata(schema)
    assert meta["latent_shape"] == [18, 512] and meta["generator"] == "ffhq.pkl"
    with pytest.raises(ValueError, match="--latent-dtype"):
        latents_schema(18, 512, latent_dtype="int8")


@pytest.mark.parametrize("spec", ["flags", "samples", "augment", "faces", "plan"])
def test_published_table_schemas_match_the_code_and_are_documented(spec):
    from pipeline.store.augment_schema import AUGMENT
    from pipeline.store.faces_schema import FACES
    from pipeline.store.flags_schema import FLAGS
    from pipeline.store.plan_schema import PLAN
    from pipeline.store.samples_schema import SAMPLES

    table = {"flags": FLAGS, "samples": SAMPLES, "augment": AUGMENT, "faces": FACES, "plan": PLAN}[spec]
    assert json.loads((SCHEMAS / f"{table.name}.v{table.version}.json").read_text()) == table.document()
    text = (SCHEMAS / "README.md").read_text()
    assert f"## `{table.name}` v{table.version}" in text
    for column in table.document()["columns"]:
        assert f"`{column['name']}`" in text, column["name"]
