"""Proves that dolg_tf's DatumProto / DelfFeatures files are DELF's wire format.

DELF is not installed: the test declares DELF's own messages (package
delf.protos, files delf/protos/datum.proto and delf/protos/feature.proto) with
descriptor_pb2, field by field as in DELF's .proto files, in a private
descriptor pool, and checks bytes in both directions.
"""

import numpy as np
import tensorflow as tf
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from dolg_tf.io import datum_io, feature_io
from dolg_tf.protos import datum_pb2, feature_pb2

_F = descriptor_pb2.FieldDescriptorProto


def _field(
  message,
  name,
  number,
  field_type,
  label=_F.LABEL_OPTIONAL,
  type_name=None,
  packed=False,
  oneof_index=None,
):
  field = message.field.add(name=name, number=number, type=field_type, label=label)
  if type_name:
    field.type_name = type_name
  if packed:
    field.options.packed = True
  if oneof_index is not None:
    field.oneof_index = oneof_index


def _delf_file_protos():
  """DELF's datum.proto and feature.proto as FileDescriptorProtos."""
  datum = descriptor_pb2.FileDescriptorProto(
    name="delf/protos/datum.proto", package="delf.protos", syntax="proto2"
  )
  shape = datum.message_type.add(name="DatumShape")
  _field(shape, "dim", 1, _F.TYPE_INT64, _F.LABEL_REPEATED, packed=True)
  float_list = datum.message_type.add(name="FloatList")
  _field(float_list, "value", 1, _F.TYPE_FLOAT, _F.LABEL_REPEATED, packed=True)
  uint32_list = datum.message_type.add(name="Uint32List")
  _field(uint32_list, "value", 1, _F.TYPE_UINT32, _F.LABEL_REPEATED, packed=True)
  proto = datum.message_type.add(name="DatumProto")
  proto.oneof_decl.add(name="kind_oneof")
  _field(proto, "shape", 1, _F.TYPE_MESSAGE, type_name=".delf.protos.DatumShape")
  _field(proto, "float_list", 2, _F.TYPE_MESSAGE, type_name=".delf.protos.FloatList", oneof_index=0)
  _field(
    proto, "uint32_list", 3, _F.TYPE_MESSAGE, type_name=".delf.protos.Uint32List", oneof_index=0
  )
  pair = datum.message_type.add(name="DatumPairProto")
  _field(pair, "first", 1, _F.TYPE_MESSAGE, type_name=".delf.protos.DatumProto")
  _field(pair, "second", 2, _F.TYPE_MESSAGE, type_name=".delf.protos.DatumProto")

  feature = descriptor_pb2.FileDescriptorProto(
    name="delf/protos/feature.proto",
    package="delf.protos",
    syntax="proto2",
    dependency=["delf/protos/datum.proto"],
  )
  delf_feature = feature.message_type.add(name="DelfFeature")
  _field(delf_feature, "descriptor", 1, _F.TYPE_MESSAGE, type_name=".delf.protos.DatumProto")
  for number, name in enumerate(["x", "y", "scale", "orientation", "strength"], start=2):
    _field(delf_feature, name, number, _F.TYPE_FLOAT)
  delf_features = feature.message_type.add(name="DelfFeatures")
  _field(
    delf_features,
    "feature",
    1,
    _F.TYPE_MESSAGE,
    _F.LABEL_REPEATED,
    type_name=".delf.protos.DelfFeature",
  )
  return datum, feature


def _delf_classes():
  pool = descriptor_pool.DescriptorPool()
  for file_proto in _delf_file_protos():
    pool.Add(file_proto)
  names = [
    "DatumShape",
    "FloatList",
    "Uint32List",
    "DatumProto",
    "DatumPairProto",
    "DelfFeature",
    "DelfFeatures",
  ]
  return {
    name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"delf.protos.{name}"))
    for name in names
  }


def _field_signature(message_proto):
  """The wire-relevant facts of each field, without package names."""
  oneofs = [o.name for o in message_proto.oneof_decl]
  return sorted(
    (
      f.number,
      f.name,
      f.type,
      f.label,
      f.type_name.rsplit(".", 1)[-1],
      f.options.packed,
      oneofs[f.oneof_index] if f.HasField("oneof_index") else None,
    )
    for f in message_proto.field
  )


class WireCompatTest(tf.test.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.delf = _delf_classes()

  def test_message_definitions_match_delf(self):
    ours = {}
    for module in (datum_pb2, feature_pb2):
      file_proto = descriptor_pb2.FileDescriptorProto()
      module.DESCRIPTOR.CopyToProto(file_proto)
      self.assertEqual(file_proto.syntax or "proto2", "proto2")
      self.assertEqual(file_proto.package, "dolg_tf.protos")
      ours.update({m.name: m for m in file_proto.message_type})
    theirs = {m.name: m for fp in _delf_file_protos() for m in fp.message_type}
    self.assertCountEqual(ours, theirs)
    for name, message_proto in theirs.items():
      self.assertEqual(_field_signature(ours[name]), _field_signature(message_proto), name)

  def test_packed_encoding_bytes(self):
    data = datum_io.serialize_array(np.array([1.0, 2.0], dtype=np.float32))
    # shape (field 1, len 3) holding dim (field 1, packed, len 1) = [2];
    # float_list (field 2, len 10) holding value (field 1, packed, len 8) with
    # two little-endian float32 values. Unpacked repeated fields would repeat
    # the tag before every value instead.
    shape = b"\x0a\x03\x0a\x01\x02"
    want = shape + b"\x12\x0a\x0a\x08" + np.array([1, 2], "<f4").tobytes()
    self.assertEqual(data, want)
    data = datum_io.serialize_array(np.array([1, 300], dtype=np.uint16))
    # uint32_list (field 3, len 5) holding value (packed, len 3): varints 1, 300.
    self.assertEqual(data, shape + b"\x1a\x05\x0a\x03\x01\xac\x02")

  def test_ours_to_delf_datum(self):
    cases = [
      np.random.default_rng(0).normal(size=[3, 4, 5]).astype(np.float32),
      np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
      np.array([0, 2**32 - 1], dtype=np.uint32),
      np.zeros([0, 16], dtype=np.float32),
    ]
    for array in cases:
      theirs = self.delf["DatumProto"].FromString(datum_io.serialize_array(array))
      self.assertEqual(list(theirs.shape.dim), list(array.shape))
      if array.dtype == np.float32:
        self.assertEqual(theirs.WhichOneof("kind_oneof"), "float_list")
        values = np.array(theirs.float_list.value, dtype=np.float32)
      else:
        self.assertEqual(theirs.WhichOneof("kind_oneof"), "uint32_list")
        values = np.array(theirs.uint32_list.value, dtype=np.uint32)
      np.testing.assert_array_equal(values.reshape(array.shape), array)
      self.assertEqual(theirs.SerializeToString(), datum_io.serialize_array(array))

  def test_delf_to_ours_datum(self):
    array = np.random.default_rng(1).normal(size=[2, 6]).astype(np.float32)
    theirs = self.delf["DatumProto"]()
    theirs.float_list.value.extend(array.flat)  # what DELF's ArrayToDatum does
    theirs.shape.dim.extend(array.shape)
    restored = datum_io.parse_array(theirs.SerializeToString())
    self.assertEqual(restored.dtype, np.float32)
    np.testing.assert_array_equal(restored, array)
    ints = self.delf["DatumProto"]()
    ints.uint32_list.value.extend([5, 6, 7, 8])
    ints.shape.dim.extend([2, 2])
    restored = datum_io.parse_array(ints.SerializeToString())
    self.assertEqual(restored.dtype, np.uint32)
    np.testing.assert_array_equal(restored, [[5, 6], [7, 8]])

  def test_datum_pair_both_ways(self):
    first = np.arange(6, dtype=np.float32).reshape(3, 2)
    second = np.array([1, 2, 3], dtype=np.uint32)
    theirs = self.delf["DatumPairProto"].FromString(datum_io.serialize_array_pair(first, second))
    self.assertEqual(list(theirs.first.shape.dim), [3, 2])
    self.assertEqual(list(theirs.first.float_list.value), [0, 1, 2, 3, 4, 5])
    self.assertEqual(list(theirs.second.uint32_list.value), [1, 2, 3])
    theirs.second.uint32_list.value.append(4)
    theirs.second.shape.dim[0] = 4
    got_first, got_second = datum_io.parse_array_pair(theirs.SerializeToString())
    np.testing.assert_array_equal(got_first, first)
    np.testing.assert_array_equal(got_second, [1, 2, 3, 4])

  def test_ours_to_delf_features(self):
    rng = np.random.default_rng(2)
    locations = rng.uniform(0, 100, size=[6, 2]).astype(np.float32)
    scales = rng.uniform(0.25, 2, size=[6]).astype(np.float32)
    descriptors = rng.normal(size=[6, 40]).astype(np.float32)
    attention = rng.uniform(0, 500, size=[6]).astype(np.float32)
    orientations = rng.uniform(-3, 3, size=[6]).astype(np.float32)
    data = feature_io.serialize(locations, scales, descriptors, attention, orientations)
    theirs = self.delf["DelfFeatures"].FromString(data)
    self.assertLen(theirs.feature, 6)
    for i, feature in enumerate(theirs.feature):
      self.assertEqual(feature.y, locations[i, 0])
      self.assertEqual(feature.x, locations[i, 1])
      self.assertEqual(feature.scale, scales[i])
      self.assertEqual(feature.strength, attention[i])
      self.assertEqual(feature.orientation, orientations[i])
      self.assertEqual(list(feature.descriptor.shape.dim), [40])
      np.testing.assert_array_equal(feature.descriptor.float_list.value, descriptors[i])
    self.assertEqual(theirs.SerializeToString(), data)

  def test_delf_to_ours_features(self):
    theirs = self.delf["DelfFeatures"]()
    for i in range(3):
      feature = theirs.feature.add(
        y=10.0 * i, x=20.0 * i + 1, scale=0.5, orientation=0.0, strength=100.0 + i
      )
      feature.descriptor.float_list.value.extend([i, -i, 0.5])
      feature.descriptor.shape.dim.append(3)
    locations, scales, descriptors, attention, orientations = feature_io.parse(
      theirs.SerializeToString()
    )
    np.testing.assert_array_equal(locations, [[0, 1], [10, 21], [20, 41]])
    np.testing.assert_array_equal(scales, [0.5] * 3)
    np.testing.assert_array_equal(descriptors, [[0, 0, 0.5], [1, -1, 0.5], [2, -2, 0.5]])
    np.testing.assert_array_equal(attention, [100, 101, 102])
    np.testing.assert_array_equal(orientations, [0, 0, 0])


if __name__ == "__main__":
  tf.test.main()
