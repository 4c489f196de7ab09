"""Convert a TrainableModule to a .tflite flatbuffer with TFLite builtin ops only."""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path

from edge_client.errors import ModelError
from model_export._tf import tf

log = logging.getLogger(__name__)


class NonBuiltinOpsError(ModelError):
    """The graph needs ops outside the TFLite builtin set (Flex or custom ops)."""


def convert(module: tf.Module, signatures: dict[str, object]) -> bytes:
    """SavedModel -> TFLite with ``TFLITE_BUILTINS`` only and resource variables."""
    with tempfile.TemporaryDirectory(prefix="edgefl-export-") as tmp:
        path = str(Path(tmp) / "saved_model")
        tf.saved_model.save(module, path, signatures=signatures)
        converter = tf.lite.TFLiteConverter.from_saved_model(path)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.experimental_enable_resource_variables = True
        try:
            flatbuffer = converter.convert()
        except Exception as exc:  # the converter raises several unrelated types
            ops = sorted(set(re.findall(r"tf\.(\w+)", str(exc))))
            named = ", ".join(ops) if ops else "see the converter log"
            raise NonBuiltinOpsError(
                f"the model needs ops that are not TFLite builtins ({named}); "
                "boards have no Flex delegate: write their gradient with builtin ops"
            ) from exc
    ops = list_ops(flatbuffer)
    foreign = [op for op in ops if not op.isupper() or op.startswith("FLEX") or op == "CUSTOM"]
    if foreign:
        raise NonBuiltinOpsError(
            f"the converted model contains non-builtin ops: {', '.join(foreign)}; "
            "boards can only run TFLite builtins"
        )
    return bytes(flatbuffer)


def list_ops(flatbuffer: bytes) -> list[str]:
    """Sorted distinct operator names in a .tflite file (custom ops by their custom name)."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(flatbuffer, 0)
    names_by_code = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    names: set[str] = set()
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            custom = code.CustomCode()
            names.add(custom.decode() if custom else "CUSTOM")
        else:
            names.add(names_by_code.get(builtin, f"BUILTIN_{builtin}"))
    return sorted(names)
