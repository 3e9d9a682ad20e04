#include "trainer/tensorboard_event.h"

#include <cstring>
#include <stdexcept>

namespace qtrain {
namespace {

// Protobuf wire types.
constexpr int kVarint = 0, kFixed64 = 1, kBytes = 2, kFixed32 = 5;

void varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}
void key(std::string& out, int field, int wire) { varint(out, (static_cast<uint64_t>(field) << 3) | wire); }
void bytes_field(std::string& out, int field, std::string_view v) {
  key(out, field, kBytes);
  varint(out, v.size());
  out.append(v);
}
void varint_field(std::string& out, int field, uint64_t v) {
  key(out, field, kVarint);
  varint(out, v);
}
void double_field(std::string& out, int field, double v) {
  key(out, field, kFixed64);
  char b[8];
  std::memcpy(b, &v, 8);  // protobuf's fixed64 is little-endian, as are the hosts qtrain builds for
  out.append(b, 8);
}
void float_field(std::string& out, int field, float v) {
  key(out, field, kFixed32);
  char b[4];
  std::memcpy(b, &v, 4);
  out.append(b, 4);
}

std::string event_with_summary(double wall_time, int64_t step, const std::string& value) {
  std::string summary;
  bytes_field(summary, 1, value);
  std::string e;
  double_field(e, 1, wall_time);
  varint_field(e, 2, static_cast<uint64_t>(step));  // int64: negative values as 10-byte two's complement
  bytes_field(e, 5, summary);
  return e;
}

// A cursor over one message's fields.
struct Reader {
  std::string_view b;
  size_t pos = 0;
  bool done() const { return pos >= b.size(); }
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos >= b.size()) throw std::runtime_error("truncated varint");
      const auto c = static_cast<unsigned char>(b[pos++]);
      v |= static_cast<uint64_t>(c & 0x7f) << shift;
      if (!(c & 0x80)) return v;
    }
    throw std::runtime_error("varint longer than 10 bytes");
  }
  std::string_view take(uint64_t n) {
    if (n > b.size() - pos) throw std::runtime_error("field runs past the end of its message");
    const std::string_view v = b.substr(pos, n);
    pos += n;
    return v;
  }
  // Reads one field: its number, wire type and (for kBytes, kFixed*) its bytes; varints in `value`.
  void next(int& field, int& wire, uint64_t& value, std::string_view& payload) {
    const uint64_t k = varint();
    field = static_cast<int>(k >> 3);
    wire = static_cast<int>(k & 7);
    switch (wire) {
      case kVarint: value = varint(); break;
      case kFixed64: payload = take(8); break;
      case kBytes: payload = take(varint()); break;
      case kFixed32: payload = take(4); break;
      default: throw std::runtime_error("wire type " + std::to_string(wire) + " (groups or invalid)");
    }
  }
};

}  // namespace

std::string file_version_event(double wall_time) {
  std::string e;
  double_field(e, 1, wall_time);
  bytes_field(e, 3, "brain.Event:2");
  return e;
}

std::string scalar_event(double wall_time, int64_t step, std::string_view tag, float value) {
  std::string v;
  bytes_field(v, 1, tag);
  float_field(v, 2, value);
  return event_with_summary(wall_time, step, v);
}

std::string text_event(double wall_time, int64_t step, std::string_view tag, std::string_view markdown) {
  std::string tensor;
  varint_field(tensor, 1, 7);  // DT_STRING
  bytes_field(tensor, 2, "");  // TensorShapeProto with no dims: a scalar
  bytes_field(tensor, 8, markdown);
  std::string plugin;
  bytes_field(plugin, 1, "text");
  std::string metadata;
  bytes_field(metadata, 1, plugin);
  varint_field(metadata, 4, 2);  // DATA_CLASS_TENSOR, as tf.summary.text writes
  std::string v;
  bytes_field(v, 1, tag);
  bytes_field(v, 8, tensor);
  bytes_field(v, 9, metadata);
  return event_with_summary(wall_time, step, v);
}

EventInfo decode_event(std::string_view bytes) {
  EventInfo info;
  Reader r{bytes};
  int field = 0, wire = 0;
  uint64_t value = 0;
  std::string_view payload;
  while (!r.done()) {
    r.next(field, wire, value, payload);
    if (field == 1 && wire == kFixed64) std::memcpy(&info.wall_time, payload.data(), 8);
    else if (field == 2 && wire == kVarint) info.step = static_cast<int64_t>(value);
    else if (field == 3 && wire == kBytes) info.file_version = true;
    else if (field == 5 && wire == kBytes) {
      Reader summary{payload};
      while (!summary.done()) {
        summary.next(field, wire, value, payload);
        if (field != 1 || wire != kBytes) continue;
        Reader v{payload};
        bool simple = false;
        std::string tag;
        while (!v.done()) {
          v.next(field, wire, value, payload);
          if (field == 1 && wire == kBytes) tag = std::string(payload);
          if (field == 2 && wire == kFixed32) simple = true;
        }
        info.tags.push_back(tag);
        info.scalars_only = info.scalars_only && simple;
      }
    }
  }
  return info;
}

}  // namespace qtrain
