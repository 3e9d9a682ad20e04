#include "data/dataset/token_cache.h"

#include <cstring>
#include <stdexcept>

#include "data/io/atomic_file.h"
#include "data/io/hdf5.h"

namespace qtrain {
namespace fs = std::filesystem;
namespace {

constexpr int kFormatVersion = 1;
constexpr const char* kVersionAttribute = "qtrain_token_cache_version";

// The counts, in a fixed order, as one int64 dataset.
constexpr size_t kNumCounts = 11;
void counts_to_array(const FileCounts& c, int64_t* a) {
  const int64_t v[kNumCounts] = {c.records,   c.skipped,           c.examples, c.dropped_no_labels, c.truncated,
                                 c.truncated_lost_eos, c.without_trained_eos, c.tokens,   c.label_tokens,
                                 c.unlocated_turns, c.special_text_in_content};
  std::memcpy(a, v, sizeof(v));
}
void counts_from_array(const int64_t* a, FileCounts& c) {
  int64_t* f[kNumCounts] = {&c.records,   &c.skipped,           &c.examples, &c.dropped_no_labels, &c.truncated,
                            &c.truncated_lost_eos, &c.without_trained_eos, &c.tokens,   &c.label_tokens,
                            &c.unlocated_turns, &c.special_text_in_content};
  for (size_t i = 0; i < kNumCounts; ++i) *f[i] = a[i];
}

}  // namespace

std::string content_hash(std::string_view bytes) {
  // Two multiply-rotate lanes over 8-byte words, then a final avalanche (splitmix64's finaliser).
  uint64_t a = 0x9E3779B97F4A7C15ull ^ bytes.size(), b = 0xC2B2AE3D27D4EB4Full;
  auto mix = [](uint64_t h, uint64_t w, uint64_t k) {
    h ^= w * k;
    h = (h << 31) | (h >> 33);
    return h * 0x9E3779B97F4A7C15ull + 0x165667B19E3779F9ull;
  };
  size_t i = 0;
  for (; i + 16 <= bytes.size(); i += 16) {
    uint64_t w0, w1;
    std::memcpy(&w0, bytes.data() + i, 8);
    std::memcpy(&w1, bytes.data() + i + 8, 8);
    a = mix(a, w0, 0x87C37B91114253D5ull);
    b = mix(b, w1, 0x4CF5AD432745937Full);
  }
  uint64_t tail[2] = {0, 0};
  std::memcpy(tail, bytes.data() + i, bytes.size() - i);
  a = mix(a, tail[0], 0x87C37B91114253D5ull);
  b = mix(b, tail[1], 0x4CF5AD432745937Full);
  uint64_t h = a ^ (b * 0xFF51AFD7ED558CCDull);
  h ^= h >> 30, h *= 0xBF58476D1CE4E5B9ull, h ^= h >> 27, h *= 0x94D049BB133111EBull, h ^= h >> 31;
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

std::optional<CachedTokens> read_token_cache(const fs::path& path, const std::string& key, std::string* why) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return *why = "no cache file", std::nullopt;
  std::optional<hdf5::File> file;
  try {
    file.emplace(hdf5::File::open(path));
  } catch (const std::exception&) {
    return *why = "not a readable HDF5 file (partial or corrupt)", std::nullopt;
  }
  // A cache that cannot be used is an expected case: every problem becomes `why` and the caller rebuilds.
  try {
    if (!file->has_attribute("/", kVersionAttribute) ||
        file->read_string_attribute("/", kVersionAttribute) != std::to_string(kFormatVersion))
      return *why = "written by another cache version", std::nullopt;
    if (!file->has_attribute("/", "key") || file->read_string_attribute("/", "key") != key)
      return *why = "stale (made from other inputs or settings)", std::nullopt;
    CachedTokens c;
    c.examples.tokens = file->read_vector<int32_t>("tokens");
    c.examples.trained = file->read_vector<uint8_t>("trained");
    c.examples.offsets = file->read_vector<int64_t>("offsets");
    const auto counts = file->read_vector<int64_t>("counts");
    const auto pad = file->read_vector<int64_t>("pad_id");
    if (counts.size() != kNumCounts || pad.size() != 1)
      return *why = "counts or pad_id malformed (" + std::to_string(counts.size()) + " counts, " +
                    std::to_string(pad.size()) + " pad ids)",
             std::nullopt;
    counts_from_array(counts.data(), c.counts);
    c.examples.pad_id = static_cast<int32_t>(pad[0]);
    const auto& off = c.examples.offsets;
    bool consistent = !off.empty() && off.front() == 0 && off.back() == static_cast<int64_t>(c.examples.tokens.size()) &&
                      c.examples.trained.size() == c.examples.tokens.size() && c.counts.examples == c.examples.size();
    for (size_t i = 1; consistent && i < off.size(); ++i) consistent = off[i] > off[i - 1];
    if (!consistent) return *why = "inconsistent offsets / sizes (corrupt)", std::nullopt;
    if (file->has_attribute("/", "skipped_messages")) {
      const std::string msgs = file->read_string_attribute("/", "skipped_messages");
      for (size_t p = 0; !msgs.empty() && p <= msgs.size();) {
        const size_t e = std::min(msgs.find('\n', p), msgs.size());
        c.counts.skipped_messages.push_back(msgs.substr(p, e - p));
        p = e + 1;
      }
    }
    return c;
  } catch (const std::exception& e) {
    // hdf5::File names the file; the caller does too, so keep only what is wrong.
    std::string msg = e.what();
    const std::string prefix = path.string() + ": ";
    if (msg.rfind(prefix, 0) == 0) msg.erase(0, prefix.size());
    return *why = "corrupt: " + msg, std::nullopt;
  }
}

void write_token_cache(const fs::path& path, const std::string& key, const CachedTokens& c) {
  if (path.has_parent_path()) fs::create_directories(path.parent_path());
  AtomicFilePath out(path);
  try {
    hdf5::File f = hdf5::File::create(out.path());
    f.write_attribute("/", kVersionAttribute, std::to_string(kFormatVersion));
    f.write_attribute("/", "key", key);
    std::string msgs;
    for (const auto& m : c.counts.skipped_messages) msgs += (msgs.empty() ? "" : "\n") + m;
    f.write_attribute("/", "skipped_messages", msgs);
    f.write_vector("tokens", c.examples.tokens);
    f.write_vector("trained", c.examples.trained);
    f.write_vector("offsets", c.examples.offsets);
    std::vector<int64_t> counts(kNumCounts);
    counts_to_array(c.counts, counts.data());
    f.write_vector("counts", counts);
    f.write_vector("pad_id", std::vector<int64_t>{c.examples.pad_id});
    f.close();
    out.commit();
  } catch (const std::exception& e) {
    throw std::runtime_error(path.string() + ": cannot write the token cache: " + e.what());
  }
}

}  // namespace qtrain
