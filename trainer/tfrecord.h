// TFRecord framing, the container of TensorBoard's event files: each record is
//   uint64 length (little-endian) · uint32 masked_crc32c(length bytes) · data · uint32 masked_crc32c(data)
// CRC32C is the Castagnoli CRC (reflected polynomial 0x82F63B78, as in iSCSI and SSE4.2's crc32
// instruction); "masked" is TensorFlow's rotation plus a constant, so a CRC stored inside CRC'd data
// does not checksum to a fixed value: ((crc >> 15) | (crc << 17)) + 0xa282ead8.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace qtrain {

uint32_t crc32c(std::string_view data);
uint32_t masked_crc32c(std::string_view data);

// One framed record: 16 bytes of framing around `data`.
std::string tfrecord_frame(std::string_view data);

struct TfRecords {
  std::vector<std::string> records;  // the payloads, in file order
  uint64_t valid_bytes = 0;          // the file's prefix that holds them
  bool torn_tail = false;            // bytes after valid_bytes: a record cut short by a crash
};

// Reads every record of `path`. What a crash mid-write leaves is reported as a torn tail and not
// returned: fewer bytes than a header, a record that runs past the end of the file, a last record whose
// data checksum fails, or zeros to the end of the file. A checksum failure anywhere else is corruption:
// InputError naming the file and the byte offset.
TfRecords read_tfrecords(const std::filesystem::path& path);

}  // namespace qtrain
