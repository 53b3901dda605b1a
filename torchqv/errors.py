"""torchqv's exceptions: one hierarchy under ``QuantizationError``.

Every error torchqv raises for what a user gave it is a ``QuantizationError`` (a ``ValueError``,
so ``except ValueError`` keeps working) of the kind below that names the culprit (the argument,
the layer or node, the file) and says what to do.  Catch the base class for "torchqv refused
this input", or a subclass for one kind:

=============================  ===========================================================
``FormatError``                a fixed-point format or its bits, step, range (``FixedPoint``)
``OverflowToGridError``        a value off the grid of a format whose ``overflow="raise"``
``ConfigError``                an argument, config field or option of a wrong type or out of range
``UnsupportedModelError``      ``quantize`` met calls it cannot simulate exactly (all listed)
``CalibrationError``           steps that could not be chosen (no data, NaN, empty ranges)
``CheckpointError``            a state dict or checkpoint that does not fit the model
``DataError``                  input data: a batch with NaN/inf, a dataset file, a data module
``ExportError``                ONNX export, parity and ONNX import
``RoundingError``              ``round_weights`` and its callback
``VerificationInputError``     ``verify_equivalence``/``search_bits`` arguments and regions
``TheoryInputError``           the executable theory (``torchqv.theory``)
=============================  ===========================================================

``MissingExtraError`` (an ``ImportError``, not a ``QuantizationError``) says which optional
extra to install.  Internal conditions (a solver timing out inside the engine, a cancelled
task) use private exceptions that never reach the user.
"""

from __future__ import annotations


class QuantizationError(ValueError):
    """torchqv refused an input; the message names the culprit and the fix."""


class FormatError(QuantizationError):
    """An invalid fixed-point format (bits, step, range, rounding, flags)."""


class OverflowToGridError(FormatError):
    """A value fell outside the grid of a format whose ``overflow`` is ``"raise"``."""


class ConfigError(QuantizationError):
    """An argument, configuration field or keyword option of a wrong type or out of range (the
    message names it and what it accepts)."""


class UnsupportedModelError(QuantizationError):
    """``quantize`` found calls it cannot quantize (the message lists every one)."""


class CalibrationError(QuantizationError):
    """Steps could not be chosen from the calibration data (missing, empty, NaN or inf)."""


class CheckpointError(QuantizationError):
    """A state dict or checkpoint does not fit the quantized model it is loaded into."""


class DataError(QuantizationError):
    """Input data is unusable: a batch with NaN or inf, a missing or malformed dataset file, a
    data module argument."""


class ExportError(QuantizationError):
    """An ONNX file cannot be written, compared or read in the requested form."""


class RoundingError(QuantizationError):
    """``round_weights`` cannot round this model with these data or options."""


class VerificationInputError(QuantizationError):
    """The networks, points, regions or settings given to the verifier are unusable."""


class TheoryInputError(QuantizationError):
    """An argument of the executable theory (``torchqv.theory``) is out of its domain."""
