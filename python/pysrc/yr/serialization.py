"""How Python values are laid out as bytes in yr: pickle protocol 5, with out-of-band buffers.

A value is pickled once; every buffer above `OOB_MIN` bytes that pickle hands out of band (numpy
arrays, bytearray, PickleBuffer) is not copied into the pickle stream but written straight into
its place in a shared-memory object by the native module, from the buffer's own memory. Reading
it back maps those places as zero-copy, read-only numpy arrays (kept pinned while they live).

Layout. The *meta* says how to read the bytes:
    magic b"YRP5" | flags u8 | 3 pad | pickle length u64 | buffer count u32 | 4 pad
    then per buffer: offset u64 | length u64
The *data* holds the pickle stream at offset 0 and each buffer at a 64-byte aligned offset.
- An object in a data worker keeps the meta as its metadata and the data as its bytes. An object
  with no metadata is raw bytes (what Rust programs and `yr.put(bytes)` store): Rust and Python
  read each other's bytes unchanged.
- A small value travels inline (a call's argument or result): u32 meta length | meta | data.
Flags: bit 0 — the value is an exception a remote call raised (yr.get raises it); bit 1 — the
value is one plain numpy array (the common large value), laid out without pickling it: the
"pickle stream" is a pickled (dtype.str, shape, fortran) and buffer 0 its bytes, so reading it
back is a view of buffer 0, not pickle's array reconstruction (a few microseconds per get).
Only arrays whose dtype its `str` names exactly (no fields, subarrays, objects or metadata) and
whose memory is contiguous take this path; anything else is pickled.
"""

import pickle
import struct

try:
    import cloudpickle as _cloudpickle
except ImportError:  # pragma: no cover - the package depends on it
    _cloudpickle = None

try:
    import numpy as _np
except ImportError:  # zero copy needs numpy; without it buffers are copied
    _np = None

MAGIC = b"YRP5"
HEADER = struct.Struct("<4sB3xQI4x")
ENTRY = struct.Struct("<QQ")
LEN = struct.Struct("<I")
FLAG_ERROR = 1
FLAG_NDARRAY = 2
#: Buffers at least this large go out of band (straight to shared memory, read in place).
OOB_MIN = 16 << 10
#: Inline values up to this size (the runtime's reply limit, less room for the meta).
INLINE_MAX = (64 << 10) - 4096
ALIGN = 64


class Encoded:
    """A value laid out: `inline` bytes when small and buffer-free, else `meta` and `parts`
    (offset, bytes or (address, length)) to write as an object. `keep` holds the buffers'
    exports alive until the write is done."""

    __slots__ = ("inline", "meta", "parts", "size", "keep")

    def __init__(self, inline=None, meta=None, parts=None, size=0, keep=None):
        self.inline = inline
        self.meta = meta
        self.parts = parts
        self.size = size
        self.keep = keep


def _dumps(value, buffer_callback):
    try:
        return pickle.dumps(value, protocol=5, buffer_callback=buffer_callback)
    except (pickle.PicklingError, AttributeError, TypeError):
        if _cloudpickle is None:
            raise
        return _cloudpickle.dumps(value, protocol=5, buffer_callback=buffer_callback)


def part_of(buf):
    """A contiguous buffer as a part the native module copies from: (address, length) read in
    place when numpy can name its address, else a bytes copy. Returns (part, what to keep)."""
    m = memoryview(buf)
    if m.nbytes == 0:
        return b"", None
    if isinstance(buf, bytes):
        return buf, None
    if _np is not None and m.contiguous:
        a = _np.frombuffer(m.cast("B") if m.format != "B" or m.ndim != 1 else m, dtype=_np.uint8)
        return (a.__array_interface__["data"][0], a.nbytes), a
    return m.tobytes(), None


def _plain_array(value):
    """(descriptor, raw bytes) of a numpy array that takes the FLAG_NDARRAY layout, else None."""
    if _np is None or type(value) is not _np.ndarray or value.nbytes < OOB_MIN:
        return None
    dt = value.dtype
    if dt.hasobject or dt.fields is not None or dt.subdtype is not None or dt.metadata:
        return None
    try:
        raw = pickle.PickleBuffer(value).raw()  # C or Fortran contiguous, else BufferError
    except (BufferError, ValueError):  # ValueError: a dtype with no buffer format (datetime)
        return None
    fortran = bool(value.flags.f_contiguous and not value.flags.c_contiguous)
    return pickle.dumps((dt.str, value.shape, fortran), protocol=5), raw


def encode(value, flags=0, allow_inline=True):
    """Lays out `value` (see the module header); inline only when `allow_inline`."""
    plain = _plain_array(value)
    if plain is not None:
        return _layout(plain[0], [plain[1]], flags | FLAG_NDARRAY)
    bufs = []

    def out_of_band(pb):
        try:
            raw = pb.raw()
        except BufferError:  # not contiguous: pickle copies it in band
            return True
        if raw.nbytes < OOB_MIN:
            return True
        bufs.append(raw)
        return False

    data = _dumps(value, out_of_band)
    if allow_inline and not bufs and len(data) + HEADER.size + LEN.size <= INLINE_MAX:
        meta = HEADER.pack(MAGIC, flags, len(data), 0)
        return Encoded(inline=b"".join((LEN.pack(len(meta)), meta, data)), size=len(data))
    return _layout(data, bufs, flags)


def _layout(data, bufs, flags):
    """The object layout of a stream `data` and its out-of-band buffers `bufs`."""
    entries = []
    parts = [(0, data)]
    keep = [bufs]
    offset = len(data)
    for raw in bufs:
        offset = (offset + ALIGN - 1) // ALIGN * ALIGN
        part, k = part_of(raw)
        parts.append((offset, part))
        if k is not None:
            keep.append(k)
        entries.append(ENTRY.pack(offset, raw.nbytes))
        offset += raw.nbytes
    meta = HEADER.pack(MAGIC, flags, len(data), len(bufs)) + b"".join(entries)
    return Encoded(meta=meta, parts=parts, size=offset, keep=keep)


def _view(window):
    """A zero-copy read-only numpy view of a native window (or a copy without numpy)."""
    if _np is not None:
        return _np.asarray(window)
    return window.tobytes()


def decode_meta(meta, window):
    """The value in `window` (a native Pinned) read with `meta`; raises what an error value
    holds. An empty meta means raw bytes: a zero-copy memoryview."""
    if not meta:
        return memoryview(_view(window))
    magic, flags, plen, nbuf = HEADER.unpack_from(meta, 0)
    if magic != MAGIC:
        raise ValueError("the object's metadata is not a yr Python value")
    buffers = []
    for i in range(nbuf):
        off, length = ENTRY.unpack_from(meta, HEADER.size + i * ENTRY.size)
        buffers.append(_view(window.window(off, length)))
    stream = window.window(0, plen).tobytes()
    if flags & FLAG_NDARRAY:
        if _np is None:
            raise ValueError("the value is a numpy array, and numpy cannot be imported here")
        dtype, shape, fortran = pickle.loads(stream)
        return buffers[0].view(_np.dtype(dtype)).reshape(shape, order="F" if fortran else "C")
    value = pickle.loads(stream, buffers=buffers)
    if flags & FLAG_ERROR:
        raise value.origin_error() if hasattr(value, "origin_error") else value
    return value


def decode_inline(b):
    """The value of inline bytes (see the module header)."""
    (mlen,) = LEN.unpack_from(b, 0)
    magic, flags, plen, nbuf = HEADER.unpack_from(b, LEN.size)
    if magic != MAGIC or nbuf:
        raise ValueError("inline bytes are not a yr Python value")
    start = LEN.size + mlen
    value = pickle.loads(memoryview(b)[start:start + plen])
    if flags & FLAG_ERROR:
        raise value.origin_error() if hasattr(value, "origin_error") else value
    return value


def decode(inline, window):
    """A value as the native `get` returns it: (inline, window)."""
    if inline:
        return decode_inline(window.tobytes())
    return decode_meta(window.meta(), window)
