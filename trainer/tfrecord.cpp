#include "trainer/tfrecord.h"

#include <array>
#include <cstring>
#include <fstream>
#include <iterator>

#include "data/error.h"

namespace qtrain {
namespace {

// Byte-at-a-time table of the reflected Castagnoli polynomial. Event files are small (a few records
// per logged step), so a sliced or SSE4.2 version would buy nothing.
constexpr std::array<uint32_t, 256> make_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    t[i] = c;
  }
  return t;
}
constexpr std::array<uint32_t, 256> kTable = make_table();

void put_le(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
uint64_t get_le(const char* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= static_cast<uint64_t>(static_cast<unsigned char>(p[i])) << (8 * i);
  return v;
}

}  // namespace

uint32_t crc32c(std::string_view data) {
  uint32_t c = 0xFFFFFFFFu;
  for (const char ch : data) c = kTable[(c ^ static_cast<unsigned char>(ch)) & 0xff] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

uint32_t masked_crc32c(std::string_view data) {
  const uint32_t c = crc32c(data);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

std::string tfrecord_frame(std::string_view data) {
  std::string out;
  out.reserve(data.size() + 16);
  put_le(out, data.size(), 8);
  put_le(out, masked_crc32c(std::string_view(out.data(), 8)), 4);
  out.append(data);
  put_le(out, masked_crc32c(data), 4);
  return out;
}

TfRecords read_tfrecords(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path.string() + ": cannot open the event file for reading");
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  TfRecords out;
  uint64_t pos = 0;
  while (pos < bytes.size()) {
    const uint64_t left = bytes.size() - pos;
    if (left < 12) {
      out.torn_tail = true;
      break;
    }
    if (get_le(bytes.data() + pos + 8, 4) != masked_crc32c(std::string_view(bytes.data() + pos, 8))) {
      // The length itself is untrustworthy. Zeros to the end are what a crash leaves after blocks the
      // file system had allocated but not written; anything else is corruption.
      if (bytes.find_first_not_of('\0', pos) == std::string::npos) {
        out.torn_tail = true;
        break;
      }
      throw InputError(path.string() + ": record at byte " + std::to_string(pos) +
                       " has a bad length checksum (the event file is corrupt; move it aside)");
    }
    const uint64_t len = get_le(bytes.data() + pos, 8);
    if (left < 16 || len > left - 16) {  // a record cut short
      out.torn_tail = true;
      break;
    }
    const std::string_view data(bytes.data() + pos + 12, len);
    if (get_le(bytes.data() + pos + 12 + len, 4) != masked_crc32c(data)) {
      if (pos + 16 + len == bytes.size()) {  // the last record: a write the crash did not finish
        out.torn_tail = true;
        break;
      }
      throw InputError(path.string() + ": record at byte " + std::to_string(pos) + " (" + std::to_string(len) +
                       " bytes) fails its data checksum and more records follow (the event file is corrupt; move it aside)");
    }
    out.records.emplace_back(data);
    pos += 16 + len;
    out.valid_bytes = pos;
  }
  return out;
}

}  // namespace qtrain
