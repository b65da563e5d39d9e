"""The precision a worker declares: float32 on CPU unless asked, a reduced one only where the device computes it,
CUDA's automatic choice, and the tolerances that tell float32 noise from drift."""

import numpy as np
import pytest

from worker.models.precision import (
    TOLERANCES,
    PrecisionUnavailable,
    agreement,
    cuda_auto_precision,
    declared_precision,
    native_on_cpu,
)

SAPPHIRE_RAPIDS = frozenset({"avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"})
ZEN4 = frozenset({"avx512f", "avx512_vnni", "avx512_bf16"})
ICE_LAKE = frozenset({"avx512f", "avx512_vnni"})


@pytest.mark.parametrize("flags", [SAPPHIRE_RAPIDS, ZEN4, ICE_LAKE, frozenset()])
def test_auto_is_float32_on_every_cpu(flags):
    assert declared_precision("auto", "cpu", flags=flags) == "float32"
    assert declared_precision("float32", "cpu", flags=flags) == "float32"


@pytest.mark.parametrize(("flags", "native"), [(SAPPHIRE_RAPIDS, True), (ZEN4, True), (ICE_LAKE, False)])
def test_bfloat16_only_where_the_cpu_computes_it(flags, native):
    assert native_on_cpu("bfloat16", flags) is native
    if native:
        assert declared_precision("bfloat16", "cpu", flags=flags) == "bfloat16"
    else:
        with pytest.raises(PrecisionUnavailable, match=r"DTYPE=bfloat16: this CPU does not compute bfloat16 natively"):
            declared_precision("bfloat16", "cpu", flags=flags)


def test_float16_on_a_cpu_needs_its_own_instructions():
    with pytest.raises(PrecisionUnavailable, match="avx512_fp16 or amx_fp16"):
        declared_precision("float16", "cpu", flags=SAPPHIRE_RAPIDS)
    assert declared_precision("float16", "cpu", flags=SAPPHIRE_RAPIDS | {"amx_fp16"}) == "float16"


def test_auto_on_cuda_depends_on_the_model():
    assert declared_precision("auto", "cuda") is None


@pytest.mark.parametrize(
    ("bfloat16", "model_type", "precision"),
    [
        (True, "bert", "bfloat16"),
        (False, "bert", "float16"),
        (False, "gemma3_text", "float32"),  # overflows in float16
        (True, "t5", "bfloat16"),
    ],
)
def test_the_precision_a_gpu_gets_by_default(bfloat16, model_type, precision):
    assert cuda_auto_precision(bfloat16_supported=bfloat16, model_type=model_type) == precision


def test_float32_tolerance_rejects_bfloat16_sized_errors_that_a_cosine_floor_lets_through():
    rng = np.random.default_rng(1)
    exact = rng.standard_normal((4, 384)).astype(np.float32)
    assert agreement(exact, exact + 1e-8 * rng.standard_normal(exact.shape)).within(TOLERANCES["float32"])
    rounded = exact * (1 + 4e-3 * rng.standard_normal(exact.shape))  # bfloat16 keeps 8 bits of mantissa
    measured = agreement(exact, rounded)
    assert measured.cosine > 0.99998
    assert not measured.within(TOLERANCES["float32"])
    assert measured.within(TOLERANCES["bfloat16"])


def test_vectors_that_overflowed_never_agree():
    exact = np.ones((2, 4))
    overflowed = exact.copy()
    overflowed[0, 0] = np.nan
    for tolerance in TOLERANCES.values():
        assert not agreement(exact, overflowed).within(tolerance)
