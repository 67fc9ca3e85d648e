"""The contract every side shares (numpy + pydantic only, never torch): the ONNX I/O contract and its version,
the preprocessing that makes a frame the model's input, and the typed hand-off files between training, quantize
and deploy (model.json, quant.json, manifest.json). training/, quantize/ and deploy/ take these from here, with
the errors the contract raises; edge/ reads the same definitions."""

from edge.contract.document import field_problem, read_document
from edge.contract.handoff import (
    MODEL_CARD_SCHEMA, ModelCard, Normalisation, ThresholdBasis, read_model_card, sha256_file,
)
from edge.contract.io import (
    CONTRACT_VERSION, INPUT_NAME, OUTPUT_NAMES, OutputAffine, Prediction, input_spec, output_spec,
)
from edge.contract.manifest import (
    MANIFEST_FILE, MANIFEST_SCHEMA, BundleInput, BundleManifest, BundleModelInfo, BundleQuantization, Golden,
    manifest_from, read_manifest,
)
from edge.contract.preprocess import (
    MAX_PIXELS_DEFAULT, decode_frame, decode_image, load_image, load_input, resize_rgb, to_input,
)
from edge.contract.quant import (
    QUANT_SCHEMA, MixedPrecision, QuantCalibration, QuantGate, QuantResult, QuantSource,
    read_quant_result,
)
from edge.errors import BundleError, EdgeError, FrameError  # what the contract's readers raise

__all__ = ["CONTRACT_VERSION", "INPUT_NAME", "OUTPUT_NAMES", "input_spec", "output_spec", "Prediction",
           "OutputAffine",
           "MODEL_CARD_SCHEMA", "ModelCard", "Normalisation", "read_model_card",
           "QUANT_SCHEMA", "QuantResult", "QuantSource", "QuantGate", "QuantCalibration", "MixedPrecision",
           "ThresholdBasis", "read_quant_result",
           "MANIFEST_SCHEMA", "MANIFEST_FILE", "BundleManifest", "BundleModelInfo", "BundleInput", "Golden",
           "BundleQuantization", "manifest_from", "read_manifest", "sha256_file",
           "MAX_PIXELS_DEFAULT", "decode_frame", "decode_image", "load_image", "load_input", "resize_rgb",
           "to_input",
           "read_document", "field_problem", "EdgeError", "BundleError", "FrameError"]
