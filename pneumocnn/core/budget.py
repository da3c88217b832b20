"""The memory budget every reader of a file keeps, whatever the file claims.

One decoded image may take `MAX_DECODED_BYTES`; what comes with it (text chunks, EXIF and ICC
segments, TIFF tags, the DICOM elements around the pixel data, a model's JSON configuration,
a metadata file) may take `MAX_METADATA_BYTES` more. Every reader checks these from what the
container says before it decodes, and again from what the decoder will produce (the JPEG inside
a DICOM file, the members of a `.keras` zip), so the peak memory stays a small multiple of the
budget for any input. No dependencies: every stage uses it.
"""

from __future__ import annotations

# The memory budget of one decoded image: frames x rows x columns x bytes per pixel. The largest
# chest film in the Kaggle data is about 2,900 x 2,700 px (8 Mpx, 8 MB in 8-bit gray); a 16-bit
# detector film of 4,300 x 3,500 px takes 30 MB. 128 MB leaves room for any real film, a
# 32-Mpx colour photograph of one, and refuses decompression bombs before they are decoded.
MAX_DECODED_BYTES = 128_000_000
# Everything else read from one file: image metadata (a film's EXIF and ICC profile take tens of
# kilobytes, a large ICC profile a few megabytes), or a JSON file (the shipped model's metadata
# is 32 KB, its Keras config 40 KB). JSON parses into Python objects about ten times its size,
# so 16 MB of it stays within the image budget.
MAX_METADATA_BYTES = 16_000_000
