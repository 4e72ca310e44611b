"""Tests for dolg_tf.utils.images (the one image decoder)."""

import io
import os
import struct
import warnings
import zlib
from unittest import mock

import cv2
import numpy as np
import tensorflow as tf
from absl.testing import parameterized
from PIL import Image, ImageFile

from dolg_tf.utils import images, pixel_modes


def _png_header(width, height, idat=b"\0" * 10):
  """A grayscale PNG claiming `width` x `height`, with (far too little) pixel data."""

  def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

  ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
  return (
    b"\x89PNG\r\n\x1a\n"
    + chunk(b"IHDR", ihdr)
    + chunk(b"IDAT", zlib.compress(idat))
    + chunk(b"IEND", b"")
  )


def _encode(image, **kwargs):
  buffer = io.BytesIO()
  image.save(buffer, **kwargs)
  return buffer.getvalue()


class DecodeImageTest(tf.test.TestCase, parameterized.TestCase):
  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path
    rng = np.random.default_rng(0)
    self.rgb = rng.integers(0, 256, size=[20, 30, 3], dtype=np.uint8)

  def _path(self, name):
    return os.path.join(self.dir, name)

  def test_path_and_bytes_give_the_same_rgb_pixels(self):
    Image.fromarray(self.rgb).save(self._path("a.png"))
    from_path = images.decode_image(self._path("a.png"))
    self.assertEqual(from_path.dtype, np.uint8)
    self.assertAllEqual(from_path, self.rgb)
    with open(self._path("a.png"), "rb") as f:
      self.assertAllEqual(images.decode_image(f.read()), self.rgb)

  @parameterized.parameters("L", "P", "RGBA", "LA", "PA", "CMYK", "YCbCr", "1", "RGBX")
  def test_modes_become_rgb_uint8(self, mode):
    image = Image.fromarray(self.rgb).convert(mode)
    array = pixel_modes.convert_mode(image)
    self.assertEqual(array.shape, (20, 30, 3))
    self.assertEqual(array.dtype, np.uint8)
    if mode in ("RGBA", "RGBX"):  # alpha / padding dropped, colours kept
      self.assertAllEqual(array, self.rgb)
    if mode in ("L", "1", "LA"):  # gray repeated over the channels
      self.assertAllEqual(array[..., 0], array[..., 2])

  def test_premultiplied_gray_alpha(self):
    image = Image.new("La", (3, 2), (100, 255))
    self.assertAllEqual(pixel_modes.convert_mode(image), np.full([2, 3, 3], 100, np.uint8))

  def test_integer_grayscale_is_scaled_not_clipped(self):
    gray16 = np.linspace(0, 65535, 20 * 30).reshape(20, 30).astype(np.uint16)
    Image.fromarray(gray16).save(self._path("g16.png"))
    loaded = images.decode_image(self._path("g16.png"))
    self.assertEqual(loaded.shape, (20, 30, 3))
    self.assertEqual(int(loaded.max()), 255)
    self.assertEqual(int(loaded[10, 15, 0]), round(int(gray16[10, 15]) * 255 / 65535))
    # 32-bit integers within 8 bits are kept as they are; larger ones scaled from 16 bits.
    small = Image.fromarray(np.array([[0, 7, 255]], np.int32), "I")
    self.assertAllEqual(pixel_modes.convert_mode(small)[0, :, 0], [0, 7, 255])
    large = Image.fromarray(np.array([[0, 257, 65535]], np.int32), "I")
    self.assertAllEqual(pixel_modes.convert_mode(large)[0, :, 0], [0, 1, 255])

  def test_float_images(self):
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), "F")
    self.assertAllEqual(pixel_modes.convert_mode(unit)[0, :, 1], [0, 128, 255])
    wide = Image.fromarray(np.array([[-3.0, 100.0, 300.0, np.nan]], np.float32), "F")
    self.assertAllEqual(pixel_modes.convert_mode(wide)[0, :, 2], [0, 100, 255, 0])

  def test_16_bit_rgb_files_keep_their_colours(self):
    rgb16 = self.rgb.astype(np.uint16) * 257  # the same colours in 16 bits
    for name in ("rgb16.png", "rgb16.tif"):
      self.assertTrue(cv2.imwrite(self._path(name), rgb16[..., ::-1]))  # OpenCV is BGR
      loaded = images.decode_image(self._path(name))
      self.assertEqual(loaded.dtype, np.uint8)
      self.assertAllClose(loaded, self.rgb, atol=1)

  def test_exif_orientation_is_applied(self):
    image = Image.fromarray(self.rgb)
    exif = image.getexif()
    exif[images.EXIF_ORIENTATION_TAG] = 6  # rotate 90 degrees clockwise on display
    data = _encode(image, format="PNG", exif=exif.tobytes())
    with images.open_image(data) as opened:
      self.assertEqual(images.exif_orientation(opened), 6)
      self.assertEqual(opened.size, (30, 20))  # not rotated yet
      self.assertEqual(opened.format, "PNG")
    self.assertAllEqual(images.decode_image(data), np.rot90(self.rgb, k=-1))
    with images.open_image(_encode(image, format="PNG")) as plain:
      self.assertEqual(images.exif_orientation(plain), 1)

  def test_bad_files_raise_errors_naming_the_file(self):
    full = _encode(Image.fromarray(self.rgb), format="JPEG")
    with open(self._path("trunc.jpg"), "wb") as f:
      f.write(full[:200])
    with open(self._path("text.jpg"), "w") as f:
      f.write("not an image")
    open(self._path("empty.png"), "wb").close()
    with open(self._path("bomb.png"), "wb") as f:
      f.write(_png_header(20000, 20000))  # 400 Mpixels claimed in a few bytes
    os.mkdir(self._path("folder.jpg"))
    for name, reason in [
      ("missing.jpg", "file not found"),
      ("folder.jpg", "cannot read"),
      ("text.jpg", "not a recognised image"),
      ("empty.png", "not a recognised image format \\(empty file\\)"),
      ("trunc.jpg", "cannot decode"),
      ("bomb.png", "image too large"),
    ]:
      with self.assertRaisesRegex(images.ImageError, f"^{self._path(name)}: {reason}"):
        images.decode_image(self._path(name))
    self.assertTrue(issubclass(images.ImageError, IOError))

  def test_bytes_errors_use_the_given_name(self):
    with self.assertRaisesRegex(images.ImageError, "^<bytes>: not a recognised image format"):
      images.decode_image(b"")
    with self.assertRaisesRegex(images.ImageError, "^x.jpg: not a recognised image format"):
      images.decode_image(b"not an image", name="x.jpg")

  def test_max_pixels_is_enforced_before_decoding(self):
    data = _encode(Image.fromarray(self.rgb), format="PNG")
    with mock.patch.object(images, "MAX_PIXELS", 20 * 30 - 1):
      with self.assertRaisesRegex(
        images.ImageError, r"^big.png: image too large \(30x20 = 600 pixels > limit 599\)"
      ):
        images.decode_image(data, name="big.png")
    with mock.patch.object(images, "MAX_PIXELS", 20 * 30):
      self.assertAllEqual(images.decode_image(data), self.rgb)
    # The caller's limit, instead of the module's.
    with self.assertRaisesRegex(images.ImageError, r"^b.png: image too large \(30x20 = 600"):
      images.decode_image(data, name="b.png", max_pixels=599)
    self.assertAllEqual(images.decode_image(data, max_pixels=600), self.rgb)
    with self.assertRaisesRegex(ValueError, "max_pixels must be positive"):
      images.decode_image(data, max_pixels=0)
    # Refused from the header: no pixel is decoded.
    with mock.patch.object(ImageFile.ImageFile, "load", side_effect=AssertionError("decoded")):
      with self.assertRaisesRegex(images.ImageError, "image too large"):
        images.decode_image(data, max_pixels=599)

  def test_the_default_limit_is_the_only_one(self):
    self.assertEqual(images.MAX_PIXELS, 100_000_000)
    self.assertIsNone(Image.MAX_IMAGE_PIXELS)  # Pillow's limit is off.
    with warnings.catch_warnings():
      warnings.simplefilter("error")  # Pillow's DecompressionBombWarning would raise here.
      # 400 Mpixels (Pillow alone: DecompressionBombError): our message, with the path.
      with self.assertRaisesRegex(
        images.ImageError,
        r"^bomb.png: image too large \(20000x20000 = 400000000 pixels > limit 100000000\)$",
      ):
        images.decode_image(_png_header(20000, 20000), name="bomb.png")
      # 100 Mpixels (Pillow alone: a warning) is within the limit: decoding is
      # tried, and fails on the missing pixel data.
      with self.assertRaisesRegex(images.ImageError, "^h.png: cannot decode"):
        images.decode_image(_png_header(10000, 10000), name="h.png")

  def test_read_file(self):
    with open(self._path("x.bin"), "wb") as f:
      f.write(b"abc")
    self.assertEqual(images.read_file(self._path("x.bin")), b"abc")
    with self.assertRaisesRegex(images.ImageError, "nothing.jpg: file not found"):
      images.read_file(self._path("nothing.jpg"))


if __name__ == "__main__":
  tf.test.main()
