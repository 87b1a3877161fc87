"""The NIfTI reader against hostile files (brain3d/data/nifti.py): property-based, with hypothesis.

A valid small volume (random shape, datatype, byte order, NIfTI-1 or -2, scaling, affine) is mutated: header
fields set to what a broken or malicious writer puts there (negative, zero, huge or NaN dimensions, voxel
sizes, transforms, offsets and scalings; unknown datatypes; a wrong magic), the content truncated or padded,
the voxels made NaN, and the whole gzip-compressed, truncated after compression or followed by garbage.
Every outcome must be a volume or an InputError with a one-line reason, never another exception; memory
stays bounded by what the file holds, never by what its header claims; and an unmutated file reads exactly
as nibabel reads it. Explicit cases beside it: a 452-byte header claiming 30000^3 voxels and a gzip bomb.
"""

from __future__ import annotations

import gzip
import math
import tempfile
import time
import tracemalloc
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brain3d.data import nifti
from brain3d.data.manifest import InputError

MAX_VOXELS = 512**3  # params.yaml preprocess.max_voxels
EXAMPLES = 2000
SPECIAL = [0.0, -0.0, -1.0, 1e-30, 1e30, 3.4e38, float("nan"), float("inf"), float("-inf")]
DTYPES = [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.float32, np.float64, np.int64]
MUTATIONS = ["dim", "pixdim", "datatype", "transform", "vox_offset", "scaling", "magic", "nan_voxels"]
RUN = {"cases": 0, "volumes": 0, "refused": 0, "seconds": 0.0, "peak_mb": 0.0}


@st.composite
def volumes(draw) -> tuple[bytes, bytes, bool]:
    """(file bytes, uncompressed content, whether any mutation was applied)."""
    shape = tuple(draw(st.lists(st.integers(2, 9), min_size=3, max_size=3)))
    if draw(st.booleans()):
        shape = (*shape, 1)  # a trailing singleton dimension, squeezed by the reader
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    data = (rng.random(shape) * 100).astype(dtype)
    affine = np.eye(4)
    affine[:3, :3] = np.diag(draw(st.lists(st.floats(0.5, 4.0), min_size=3, max_size=3)))
    affine[:3, 3] = draw(st.lists(st.floats(-100, 100), min_size=3, max_size=3))
    klass = draw(st.sampled_from([nib.Nifti1Image, nib.Nifti2Image]))
    hdr = klass(data, affine, dtype=dtype).header.as_byteswapped(draw(st.sampled_from("<>")))
    if draw(st.booleans()):
        hdr.set_slope_inter(draw(st.floats(0.1, 10)), draw(st.floats(-10, 10)))
    hdr.set_qform(affine, code=draw(st.integers(0, 2)))
    hdr.set_sform(affine, code=draw(st.integers(0, 2)))
    hdr["vox_offset"] = hdr.sizeof_hdr + 4
    dtype = hdr.get_data_dtype()  # with the header's byte order
    mutations = draw(st.lists(st.sampled_from(MUTATIONS), max_size=3))
    raw = data.astype(dtype).tobytes(order="F")
    for m in mutations:
        raw = _mutate(draw, hdr, m, raw, dtype)
    content = hdr.binaryblock + b"\0\0\0\0" + raw
    ends = draw(st.sampled_from(["whole", "truncated", "padded"]))
    if ends == "truncated":
        content = content[: draw(st.integers(0, len(content) - 1))]
    elif ends == "padded":
        content += b"\0" * draw(st.sampled_from([1, 100, 70_000, 3_000_000]))
    packed = draw(st.sampled_from(["raw", "gzip", "gzip cut", "gzip + junk", "two members"]))
    if packed == "raw":
        return content, content, bool(mutations) or ends != "whole"
    stream = gzip.compress(content, 1)
    if packed == "gzip cut":
        stream = stream[: draw(st.integers(1, len(stream) - 1))]
    elif packed == "gzip + junk":
        stream += draw(st.binary(min_size=1, max_size=64))
    elif packed == "two members":
        half = len(content) // 2
        stream = gzip.compress(content[:half], 1) + gzip.compress(content[half:], 1)
    return stream, content, bool(mutations) or ends != "whole" or packed in ("gzip cut", "gzip + junk")


def _mutate(draw, hdr, field: str, raw: bytes, dtype: np.dtype) -> bytes:
    """Set one header field to a hostile value (or the voxels to NaN); returns the voxel bytes."""
    if field == "dim":
        hdr["dim"][draw(st.integers(0, 7))] = draw(st.sampled_from([-5, -1, 0, 1, 8, 512, 30000, 32767]))
    elif field == "pixdim":
        hdr["pixdim"][draw(st.integers(0, 4))] = draw(st.sampled_from(SPECIAL))
    elif field == "datatype":
        hdr["datatype"] = draw(st.sampled_from([0, 1, 32, 128, 1536, 1792, 2048, 2304, 999, -3]))
    elif field == "transform":
        target = draw(st.sampled_from(["srow_x", "srow_y", "quatern_b", "quatern_d", "qoffset_x"]))
        value = draw(st.sampled_from(SPECIAL + [2.0]))  # a quaternion component > 1 is impossible
        if np.ndim(hdr[target]):
            hdr[target][draw(st.integers(0, 3))] = value
        else:
            hdr[target] = value
        hdr["sform_code" if target.startswith("srow") else "qform_code"] = draw(st.integers(0, 4))
    elif field == "vox_offset":
        hdr["vox_offset"] = draw(st.sampled_from([0, 100, 351, 352, 353, 544, 1 << 20, 1 << 30, 2**40]))
    elif field == "scaling":
        hdr[draw(st.sampled_from(["scl_slope", "scl_inter"]))] = draw(st.sampled_from(SPECIAL))
    elif field == "magic":
        hdr["magic"] = draw(st.sampled_from([b"ni1", b"n+9", b"", b"XXXX"]))
    elif field == "nan_voxels" and dtype.kind == "f":
        values = np.frombuffer(raw, dtype).copy()
        values[draw(st.integers(0, values.size - 1))] = np.nan
        raw = values.tobytes()
    return raw


def _load(path: Path):
    """(image or InputError, peak traced bytes)."""
    tracemalloc.start()
    try:
        return nifti.load(path, "fuzz", max_voxels=MAX_VOXELS), tracemalloc.get_traced_memory()[1]
    except InputError as exc:
        return exc, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@settings(
    max_examples=EXAMPLES,
    deadline=None,  # a shared 2-core machine: a slow example is not a failure; the whole test takes ~30 s
    derandomize=True,  # the same cases on every run and in CI
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=volumes())
def test_every_file_is_a_volume_or_one_input_error(case):
    stored, content, mutated = case
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / (
            "fuzz.nii.gz" if stored[:2] == b"\x1f\x8b" else "fuzz.nii"
        )  # nibabel goes by name
        path.write_bytes(stored)
        out, peak = _load(path)
        if not mutated:  # a valid file reads exactly as nibabel reads it
            assert isinstance(out, nib.Nifti1Image), out
            ref = nib.load(str(path))
            want = np.asarray(ref.dataobj, dtype=np.float64).reshape(out.shape)
            np.testing.assert_allclose(np.asarray(out.dataobj), want, rtol=1e-5, atol=1e-4)
            np.testing.assert_allclose(out.affine, ref.affine, atol=1e-4)
    RUN["cases"] += 1
    RUN["seconds"] += time.perf_counter() - t0
    RUN["peak_mb"] = max(RUN["peak_mb"], peak / 2**20)
    if isinstance(out, InputError):
        RUN["refused"] += 1
        assert out.reason and "\n" not in out.reason
    else:
        RUN["volumes"] += 1
        data = np.asarray(out.dataobj)
        assert data.ndim == 3 and data.dtype == np.float32 and np.isfinite(data).all()
        assert np.isfinite(out.affine).all() and abs(np.linalg.det(out.affine[:3, :3])) > 0
    # at most a few float32 copies of what the file holds, whatever its header claims
    assert peak <= 10 * len(content) + 4 * 2**20, f"{peak / 2**20:.1f} MB for {len(content)} bytes"


def test_zz_fuzz_summary():
    """Cases run, outcomes and time (pytest -s shows it; the property test runs first, in file order)."""
    if RUN["cases"]:
        print(
            f"\nNIfTI fuzz: {RUN['cases']} cases ({RUN['volumes']} volumes, {RUN['refused']} refused) in "
            f"{RUN['seconds']:.1f} s of loading; peak traced memory {RUN['peak_mb']:.1f} MB"
        )
        assert RUN["volumes"] > EXAMPLES // 20 and RUN["refused"] > EXAMPLES // 4  # both outcomes explored


def _header(shape, dtype=np.float32) -> bytes:
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr["vox_offset"] = 352
    hdr.set_sform(np.diag([1.0, 1.0, 1.0, 1.0]), code=1)
    return hdr.binaryblock + b"\0\0\0\0"


def test_a_header_claiming_30000_cubed_voxels_costs_nothing(tmp_path):
    path = tmp_path / "huge.nii"
    path.write_bytes(_header((30000, 30000, 30000)) + b"\0" * 100)  # 452 bytes
    assert path.stat().st_size == 452
    out, peak = _load(path)
    assert (
        isinstance(out, InputError)
        and "30000x30000x30000 = 2.7e+13 voxels, more than preprocess" in out.reason
    )
    assert peak < 2**20


def test_a_gzip_bomb_is_refused_after_reading_about_what_the_header_describes(tmp_path):
    """1 GiB of zeros behind a header that describes 64^3 bytes: about 1 MB on disk. Refused (more data than
    the header describes) after inflating 64^3 bytes and a little more, in well under a second."""
    path = tmp_path / "bomb.nii.gz"
    pack = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1 << 24)
    with open(path, "wb") as fh:
        fh.write(pack.compress(_header((64, 64, 64), np.uint8)))
        for _ in range(64):
            fh.write(pack.compress(zeros))
        fh.write(pack.flush())
    assert path.stat().st_size < 2 * 2**20
    t0 = time.perf_counter()
    out, peak = _load(path)
    assert isinstance(out, InputError) and "more data than the header describes" in out.reason
    assert peak < 32 * 2**20 and time.perf_counter() - t0 < 5
    # the same header and exactly its voxels is a volume
    good = tmp_path / "good.nii.gz"
    good.write_bytes(gzip.compress(_header((64, 64, 64), np.uint8) + bytes(range(256)) * 1024))
    assert nifti.load(good, max_voxels=MAX_VOXELS).shape == (64, 64, 64)


@pytest.mark.parametrize(
    "field,value,reason",
    [
        ("srow_x", [math.nan, 0, 0, 0], "the header's sform is not finite"),
        ("pixdim", [1, 0, 0, 0, 1, 1, 1, 1], "invalid voxel size (pixdim)"),
        ("scl_inter", math.inf, "scl_inter is not finite"),
        ("datatype", 32, "unsupported datatype code 32 (complex64)"),
        ("vox_offset", 0, "invalid vox_offset 0"),
    ],
)
def test_header_problems_are_named(tmp_path, field, value, reason):
    hdr = nib.Nifti1Header(_header((8, 8, 8))[:348])
    hdr[field] = value
    if field == "scl_inter":
        hdr["scl_slope"] = 2.0
    path = tmp_path / "bad.nii"
    path.write_bytes(hdr.binaryblock + b"\0\0\0\0" + np.arange(512, dtype=np.float32).tobytes())
    with pytest.raises(InputError) as info:
        nifti.load(path, max_voxels=MAX_VOXELS)
    assert info.value.reason.startswith(reason), info.value.reason
