"""The contract every side shares (numpy + pydantic only, never torch): the ONNX I/O contract and its version,
the preprocessing that makes a frame the model's input, and the typed hand-off files between training, quantize
and deploy. training/, quantize/ and deploy/ take these from here; edge/ reads the same definitions."""

from edge.contract.document import field_problem, read_document
from edge.contract.handoff import ModelCard, Normalisation, read_model_card
from edge.contract.io import CONTRACT_VERSION, INPUT_NAME, OUTPUT_NAMES, input_spec, output_spec
from edge.contract.preprocess import (
    MAX_PIXELS_DEFAULT, decode_frame, decode_image, load_image, load_input, resize_rgb, to_input,
)

__all__ = ["CONTRACT_VERSION", "INPUT_NAME", "OUTPUT_NAMES", "input_spec", "output_spec", "ModelCard", "Normalisation",
           "read_model_card", "MAX_PIXELS_DEFAULT", "decode_frame", "decode_image", "load_image", "load_input",
           "resize_rgb", "to_input", "read_document", "field_problem"]
