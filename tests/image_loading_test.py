"""Tests for dolg_tf.io.image_loading."""

import os

import numpy as np
import tensorflow as tf
from absl.testing import parameterized
from PIL import Image

from dolg_tf.io import image_loading
from dolg_tf.utils import images


class LoadImageTest(tf.test.TestCase, parameterized.TestCase):
  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path
    rng = np.random.default_rng(0)
    self.rgb = rng.integers(0, 256, size=[20, 30, 3], dtype=np.uint8)

  def _path(self, name):
    return os.path.join(self.dir, name)

  def test_rgb_png_round_trip(self):
    Image.fromarray(self.rgb).save(self._path("a.png"))
    self.assertAllEqual(image_loading.load_image(self._path("a.png")), self.rgb)

  @parameterized.parameters("L", "P", "RGBA", "LA", "CMYK", "1")
  def test_modes_become_rgb_uint8(self, mode):
    image = Image.fromarray(self.rgb).convert(mode)
    name = "b.jpg" if mode == "CMYK" else "b.png"
    image.save(self._path(name))
    loaded = image_loading.load_image(self._path(name))
    self.assertEqual(loaded.shape, (20, 30, 3))
    self.assertEqual(loaded.dtype, np.uint8)

  def test_16bit_grayscale_is_scaled_not_clipped(self):
    gray16 = np.linspace(0, 65535, 20 * 30).reshape(20, 30).astype(np.uint16)
    Image.fromarray(gray16).save(self._path("c.png"))
    loaded = image_loading.load_image(self._path("c.png"))
    self.assertEqual(loaded.shape, (20, 30, 3))
    self.assertEqual(int(loaded.max()), 255)
    self.assertEqual(int(loaded[10, 15, 0]), round(int(gray16[10, 15]) * 255 / 65535))

  def test_exif_orientation_is_applied(self):
    image = Image.fromarray(self.rgb)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    image.save(self._path("d.jpg"), exif=exif.tobytes(), quality=95)
    loaded = image_loading.load_image(self._path("d.jpg"))
    self.assertEqual(loaded.shape, (30, 20, 3))

  def test_bad_files_raise_errors_naming_the_file(self):
    with open(self._path("trunc.jpg"), "wb") as f:
      Image.fromarray(self.rgb).save(self._path("full.jpg"))
      f.write(open(self._path("full.jpg"), "rb").read()[:200])
    with open(self._path("text.jpg"), "w") as f:
      f.write("not an image")
    open(self._path("empty.png"), "wb").close()
    for name, reason in [
      ("missing.jpg", "file not found"),
      ("text.jpg", "not a recognised image"),
      ("empty.png", "not a recognised image"),
      ("trunc.jpg", "cannot decode"),
    ]:
      with self.assertRaisesRegex(images.ImageError, f"{name}: {reason}"):
        image_loading.load_image(self._path(name))


class SizeLimitsTest(tf.test.TestCase):
  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path

  def _save(self, name, width, height):
    path = os.path.join(self.dir, name)
    Image.new("RGB", (width, height), (10, 200, 30)).save(path)
    return path

  def test_images_under_10_px_after_resizing_are_refused(self):
    def keep(image, box):
      return image

    self.assertEqual(image_loading.MIN_IMAGE_SIZE, 10)
    ok = self._save("ok.png", 10, 10)
    self.assertEqual(image_loading.load_and_preprocess(ok, None, keep).shape, (10, 10, 3))
    narrow = self._save("narrow.png", 9, 40)
    with self.assertRaisesRegex(
      images.ImageError,
      r"narrow.png: image too small \(9x40 after cropping and resizing; both sides must be at "
      r"least 10 px\), no descriptor written",
    ):
      image_loading.load_and_preprocess(narrow, None, keep)
    # DELF's rule applies after resizing: 200x15 shrunk to 100x8 is too small.
    wide = self._save("wide.png", 200, 15)

    def shrink(image, box):
      return image_loading.resize_image(image, max_image_size=100)[0]

    with self.assertRaisesRegex(images.ImageError, r"wide.png: image too small \(100x8 "):
      image_loading.load_and_preprocess(wide, None, shrink)
    # ... and to crops, and to DELG's PreprocessedImage-like results.
    big = self._save("big.png", 40, 40)

    def crop(image, box):
      return image_loading.crop_box(image, box)

    with self.assertRaisesRegex(images.ImageError, r"big.png: image too small \(5x30 "):
      image_loading.load_and_preprocess(big, (0, 0, 5, 30), crop)

    class Prepared:
      def __init__(self, image):
        self.image = image

    with self.assertRaisesRegex(images.ImageError, "narrow.png: image too small"):
      image_loading.load_and_preprocess(narrow, None, lambda image, box: Prepared(image))
    self.assertEqual(image_loading.load_and_preprocess(narrow, None, keep, min_size=9).shape[1], 9)

  def test_max_pixels_is_passed_to_the_decoder(self):
    path = self._save("p.png", 30, 20)
    with self.assertRaisesRegex(images.ImageError, r"p.png: image too large \(30x20 = 600"):
      image_loading.load_image(path, max_pixels=599)
    with self.assertRaisesRegex(images.ImageError, "p.png: image too large"):
      image_loading.load_and_preprocess(path, None, lambda image, box: image, max_pixels=599)
    self.assertEqual(image_loading.load_image(path, max_pixels=600).shape, (20, 30, 3))


class ResizeImageTest(tf.test.TestCase):
  def setUp(self):
    super().setUp()
    self.image = np.zeros([300, 200, 3], np.uint8)

  def test_max_size_shrinks_the_longest_side(self):
    resized, factors = image_loading.resize_image(self.image, max_image_size=150)
    self.assertEqual(resized.shape, (150, 100, 3))
    self.assertAllClose(factors, [0.5, 0.5])

  def test_small_images_are_kept_unless_min_size(self):
    resized, factors = image_loading.resize_image(self.image, max_image_size=1024)
    self.assertEqual(resized.shape, (300, 200, 3))
    self.assertAllClose(factors, [1.0, 1.0])
    # DELF: the min limit also applies to the largest side.
    resized, factors = image_loading.resize_image(
      self.image, max_image_size=1024, min_image_size=600
    )
    self.assertEqual(resized.shape, (600, 400, 3))
    self.assertAllClose(factors, [2.0, 2.0])
    resized, _ = image_loading.resize_image(self.image, min_image_size=250)
    self.assertEqual(resized.shape, (300, 200, 3))

  def test_square_and_resize_factor(self):
    resized, _ = image_loading.resize_image(self.image, max_image_size=64, square=True)
    self.assertEqual(resized.shape, (64, 64, 3))
    resized, factors = image_loading.resize_image(self.image, square=True)
    self.assertEqual(resized.shape, (300, 300, 3))
    self.assertAllClose(factors, [1.0, 1.5])
    resized, _ = image_loading.resize_image(self.image, max_image_size=300, resize_factor=0.5)
    self.assertEqual(resized.shape, (150, 100, 3))

  def test_invalid_sizes(self):
    with self.assertRaisesRegex(ValueError, "max_image_size"):
      image_loading.resize_image(self.image, max_image_size=10, min_image_size=20)
    with self.assertRaisesRegex(ValueError, "resize_factor"):
      image_loading.resize_image(self.image, resize_factor=-1)

  def test_crop_box(self):
    image = np.arange(10 * 12 * 3, dtype=np.uint8).reshape(10, 12, 3)
    self.assertAllEqual(image_loading.crop_box(image, (2.4, 1.6, 7.5, 20)), image[2:10, 2:8])
    with self.assertRaisesRegex(ValueError, "empty crop"):
      image_loading.crop_box(image, (5, 5, 5, 8))


if __name__ == "__main__":
  tf.test.main()
