"""Validated NIfTI loading: every way a volume can be unusable becomes one clear `InputError`.

The header is checked before any voxel is read (dimensions, datatype, voxel count against
`preprocess.max_voxels`, voxel size, orientation, data offset, file size), and the voxels are read from a
stream that stops at the bytes the header describes: a 452-byte file claiming 30000^3 voxels, or a gzip bomb,
costs a few kilobytes, never the memory it claims. nibabel parses the header fields; it never opens the file.
"""

from __future__ import annotations

import math
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from brain3d.data.manifest import InputError

# datatype code -> scalar type (complex, RGB, binary and float128 voxels are not scan intensities)
DTYPES = dict(zip((2, 4, 8, 16, 64, 256, 512, 768, 1024, 1280), "u1 i2 i4 f4 f8 i1 u2 u4 i8 u8".split()))
HEADERS = {348: (nib.Nifti1Header, b"n+1\0", 344), 540: (nib.Nifti2Header, b"n+2\0\r\n\x1a\n", 4)}
MAX_EXTENSION_BYTES = 64 << 20  # header extensions before the voxels (vox_offset beyond them is refused)
# bytes after the last voxel tolerated; more means the header does not describe the data
TRAILING_SLACK = 1 << 16
CHUNK = 1 << 24  # voxel bytes converted at a time
READ = 1 << 20  # compressed bytes read at a time


def load(
    path: str | Path, subject: str | None = None, *, max_voxels: int, label_map: bool = False
) -> nib.Nifti1Image:
    """Load a 3D NIfTI (.nii or .nii.gz, NIfTI-1 or -2) and check that its voxels are usable.

    Raises `InputError` for: a missing, unreadable or empty file, not a NIfTI, a header that is invalid or
    claims more than `max_voxels` voxels (`preprocess.max_voxels`), data shorter or longer than the header
    says (truncated, corrupt, a gzip bomb), a true 4D series (trailing singleton dimensions are squeezed),
    non-finite voxels, an all-constant volume, and a non-finite or singular affine. A `label_map` (lesion
    labels) may be all zero: a healthy subject has no lesion. Memory: the float32 volume plus one chunk.
    """
    path = Path(path)
    subject = subject or path.name
    with _Stream(path, subject) as stream:
        head, layout = _read_header(stream, max_voxels)
        if not stream.gz and stream.size < layout.end:  # refused before anything more is read
            stream.truncated(layout.end, stream.size)
        stream.exactly(layout.offset - len(head), layout.end)  # extension flag and extensions: skipped
        data = layout.voxels(stream)
        if len(stream.read(TRAILING_SLACK + 1)) > TRAILING_SLACK:
            raise InputError(
                subject,
                path,
                f"more data than the header describes ({layout.end} bytes): a wrong header or a gzip bomb",
            )
    _check_voxels(data, path, subject, label_map)
    out = nib.Nifti1Image(data, layout.affine)
    out.set_qform(layout.affine, code=1)
    out.set_sform(layout.affine, code=1)
    return out


def read_header(path: str | Path, subject: str | None = None, *, max_voxels: int) -> tuple[int, int, int]:
    """The 3D shape a NIfTI's header describes, after `load`'s header checks; no voxel is read (so truncated
    or non-finite voxels are not seen). InputError as `load`."""
    path = Path(path)
    with _Stream(path, subject or path.name) as stream:
        return _read_header(stream, max_voxels)[1].shape[:3]


def _read_header(stream: _Stream, max_voxels: int) -> tuple[bytes, _Layout]:
    """The header's bytes and what they say, the stream left just after them."""
    head = stream.read(348)  # a NIfTI-1 header, or the start of a NIfTI-2 one
    if len(head) == 348 and 540 in struct.unpack("<i", head[:4]) + struct.unpack(">i", head[:4]):
        head += stream.read(540 - 348)
    return head, _Layout.parse(head, stream.path, stream.subject, max_voxels)


class _Stream:
    """The file's content read in order (inflated when it is gzip, whatever its name), never further than
    asked: gzip is decompressed with an output cap, so a bomb costs what the header claims, not what it holds."""

    def __init__(self, path: Path, subject: str):
        self.path, self.subject = path, subject
        if not path.exists():
            raise InputError(subject, path, "file not found")
        if path.is_dir():
            raise InputError(subject, path, "a folder, not a NIfTI file")
        if not path.is_file():  # a FIFO or device would block or never end
            raise InputError(subject, path, "not a regular file (a pipe, socket or device)")
        try:
            self.fh = open(path, "rb")  # noqa: SIM115 (closed by __exit__)
            self.size = path.stat().st_size
            self.gz = self.fh.read(2) == b"\x1f\x8b"
            self.fh.seek(0)
        except OSError as exc:
            raise InputError(subject, path, f"cannot read the file ({exc.strerror or exc})") from exc
        if self.size == 0:
            self.fh.close()
            raise InputError(subject, path, "empty file (0 bytes)")
        self.inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self.pending = b""  # compressed bytes not yet inflated
        self.pos = 0  # content bytes delivered so far

    def __enter__(self) -> _Stream:
        return self

    def __exit__(self, *exc) -> None:
        self.fh.close()

    def read(self, n: int) -> bytes:
        """The next `n` bytes of the content (fewer only where it ends)."""
        try:
            out = self._read(n)
        except (OSError, zlib.error) as exc:
            raise InputError(
                self.subject, self.path, f"corrupt or truncated data ({type(exc).__name__}: {exc})"
            ) from exc
        self.pos += len(out)
        return out

    def exactly(self, n: int, end: int) -> bytes:
        """The next `n` bytes; InputError (truncated, the header needing `end` bytes) if the content ends sooner."""
        out = self.read(n)
        if len(out) < n:
            self.truncated(end, self.pos)
        return out

    def truncated(self, needed: int, held: int):
        where = "decompressed data ends" if self.gz else "file ends"
        raise InputError(
            self.subject, self.path, f"truncated: the header needs {needed} bytes, the {where} after {held}"
        )

    def _read(self, n: int) -> bytes:
        if not self.gz:
            return self.fh.read(n)
        out = bytearray()
        while len(out) < n:
            if not self.pending:
                self.pending = self.fh.read(READ)
                if not self.pending:
                    break
            out += self.inflate.decompress(self.pending, n - len(out))
            self.pending = self.inflate.unconsumed_tail
            if self.inflate.eof:  # a gzip file may hold several members, one after the other
                self.pending = self.inflate.unused_data + self.pending
                self.inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        return bytes(out)


@dataclass
class _Layout:
    """What a valid header says about the voxels: where they are, their type, shape and world mapping."""

    shape: tuple[int, ...]  # as stored (trailing singleton dimensions included)
    dtype: np.dtype
    offset: int
    slope: float
    inter: float
    affine: np.ndarray

    @property
    def end(self) -> int:
        return self.offset + math.prod(self.shape) * self.dtype.itemsize

    @classmethod
    def parse(cls, raw: bytes, path: Path, subject: str, max_voxels: int) -> _Layout:
        """The layout of a header, or InputError naming the first problem; no voxel is read."""

        def bad(reason: str) -> InputError:
            return InputError(subject, path, reason)

        hdr = _header(raw, bad)
        shape = _shape(hdr, bad, max_voxels)
        code = int(hdr["datatype"])
        if code not in DTYPES:
            name = nib.nifti1.data_type_codes.label.get(code, "unknown")
            raise bad(f"unsupported datatype code {code} ({name}): not scalar intensities")
        offset = float(hdr["vox_offset"])
        minimum = hdr.sizeof_hdr + 4  # the header and its 4 extension-flag bytes
        if not math.isfinite(offset) or not minimum <= offset <= minimum + MAX_EXTENSION_BYTES:
            raise bad(
                f"invalid vox_offset {offset:g}: the voxels of a single-file NIfTI start at byte {minimum}+"
            )
        slope, inter = float(hdr["scl_slope"]), float(hdr["scl_inter"])
        if slope == 0 or not math.isfinite(slope):  # no scaling, as nibabel and the standard read it
            slope, inter = 1.0, 0.0
        elif not math.isfinite(inter):
            raise bad("scl_inter is not finite (NaN/Inf)")
        affine = _affine(hdr, bad)
        return cls(
            shape, np.dtype(DTYPES[code]).newbyteorder(hdr.endianness), int(offset), slope, inter, affine
        )

    def voxels(self, stream: _Stream) -> np.ndarray:
        """Float32 voxels of a 3D volume (trailing singleton dimensions squeezed), scaled as the header says,
        converted chunk by chunk from `stream` (positioned at `offset`) as they arrive: memory follows what
        the file holds, not what its header claims."""
        n, step = math.prod(self.shape), CHUNK // self.dtype.itemsize
        chunks = [
            np.frombuffer(
                stream.exactly(min(n - start, step) * self.dtype.itemsize, self.end), self.dtype
            ).astype(np.float32)
            for start in range(0, n, step)
        ]
        out = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
        data = out.reshape(self.shape, order="F").reshape(self.shape[:3], order="F")
        if (self.slope, self.inter) != (1.0, 0.0):
            with np.errstate(all="ignore"):  # an overflow becomes Inf, refused as a non-finite voxel
                data *= np.float32(self.slope)
                data += np.float32(self.inter)
        return data


def _header(raw: bytes, bad) -> nib.Nifti1Header:
    """A NIfTI-1 or -2 single-file header (either byte order), recognised by sizeof_hdr and magic."""
    for endian in "<>":
        size = struct.unpack(f"{endian}i", raw[:4])[0] if len(raw) >= 4 else 0
        if size in HEADERS and len(raw) >= size:
            klass, magic, at = HEADERS[size]
            if raw[at : at + len(magic)] != magic:
                pair = raw[at : at + 3] in (b"ni1", b"ni2")
                raise bad(
                    "a NIfTI .hdr/.img pair header; give the single-file .nii"
                    if pair
                    else "not a readable NIfTI (bad magic string)"
                )
            hdr = klass(raw[:size], endianness=endian, check=False)
            if hdr["pixdim"][0] not in (-1, 1):  # qfac 0 means 1 (nibabel's loader fixes it the same way)
                hdr["pixdim"][0] = 1
            return hdr
    raise bad(f"not a readable NIfTI (no NIfTI-1 or NIfTI-2 header in the first {len(raw)} bytes)")


def _shape(hdr, bad, max_voxels: int) -> tuple[int, ...]:
    """The stored shape: 3D, or 3D with trailing singleton dimensions; at most `max_voxels` voxels."""
    dim = [int(d) for d in hdr["dim"]]
    if not 1 <= dim[0] <= 7:
        raise bad(f"invalid header: dim[0] = {dim[0]} (the number of dimensions must be 1 to 7)")
    shape = tuple(dim[1 : dim[0] + 1])
    if min(shape) < 1:
        raise bad(f"invalid header: dimensions {shape} (each must be at least 1)")
    spatial = shape[:3] if all(s == 1 for s in shape[3:]) else shape
    if len(spatial) != 3:
        raise bad(f"expected a 3D volume, got shape {spatial} ({len(spatial)}D)")
    if min(spatial) < 2:
        raise bad(f"degenerate volume shape {spatial}")
    n = math.prod(shape)
    if n > max_voxels:
        size = "x".join(map(str, shape))
        raise bad(
            f"the header claims {size} = {n:.3g} voxels, more than preprocess.max_voxels ({max_voxels})"
        )
    pixdim = [float(p) for p in hdr["pixdim"][1:4]]
    if not all(math.isfinite(p) and p != 0 for p in pixdim):
        raise bad(f"invalid voxel size (pixdim) {pixdim}: each must be finite and non-zero")
    return shape


def _affine(hdr, bad) -> np.ndarray:
    """The voxel-to-world affine nibabel would use (sform, else qform, else pixdim), refused when a coded
    transform is non-finite or the result is singular."""
    fields = {
        "sform": ("srow_x", "srow_y", "srow_z"),
        "qform": ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z"),
    }
    for name, keys in fields.items():
        if int(hdr[f"{name}_code"]) != 0 and not all(np.isfinite(hdr[k]).all() for k in keys):
            raise bad(f"the header's {name} is not finite (NaN/Inf)")
    hdr["pixdim"][1:4] = np.abs(hdr["pixdim"][1:4])  # as nibabel's loader: the sign lives in the affine
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            affine = np.asarray(hdr.get_best_affine(), dtype=np.float64)
    except Exception as exc:  # nibabel's HeaderDataError/ValueError for an impossible quaternion
        raise bad(f"invalid orientation in the header ({type(exc).__name__}: {exc})") from exc
    if not np.isfinite(affine).all():
        raise bad("the voxel-to-world affine is not finite (NaN/Inf)")
    with np.errstate(all="ignore"):
        det = np.linalg.det(affine[:3, :3])
    if not abs(det) >= 1e-6:
        raise bad("singular affine (no valid voxel-to-world mapping)")
    return affine


def _check_voxels(data: np.ndarray, path: Path, subject: str, label_map: bool) -> None:
    """Refuse non-finite voxels and (unless a label map, which may be all zero) a constant volume."""
    bad = ~np.isfinite(data)
    if bad.any():
        raise InputError(subject, path, f"{int(bad.sum())} non-finite voxel(s) (NaN/Inf)")
    if not label_map and float(data.max()) == float(data.min()):
        raise InputError(subject, path, f"empty volume (every voxel is {float(data.min()):g})")
