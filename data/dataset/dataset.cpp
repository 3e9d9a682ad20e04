#include "data/dataset/dataset.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <numeric>
#include <thread>
#include <variant>

#include "data/dataset/dataset_formats.h"
#include "data/dataset/dataset_records.h"
#include "data/error.h"
#include "data/dataset/example_tokenizer.h"
#include "data/dataset/shuffle.h"
#include "data/dataset/token_cache.h"
#include "data/io/atomic_file.h"
#include "data/jinja/template.h"

namespace qtrain {
namespace {

// Bumped whenever rendering, masking or truncation changes, so old caches are not reused.
constexpr const char* kPipelineVersion = "qtrain-data-2";  // 2: Jinja chat templates, masks by offsets

struct Settings {
  const DataConfig* config;
  const Tokenizer* tok;
  FormatContext ctx;
  std::string tokenizer_hash;
  ConsoleOptions console;
};

// Tokenizer files as transformers reads them; their contents key the cache.
std::string hash_tokenizer_files(const std::filesystem::path& dir) {
  std::string all;
  for (const char* name : {"tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "tokenizer_config.json",
                           "special_tokens_map.json", "added_tokens.json"}) {
    const auto p = dir / name;
    if (!std::filesystem::exists(p)) continue;
    all += std::string(name) + ":" + content_hash(read_file_bytes(p)) + ";";
  }
  return content_hash(all);
}

// Everything the tokens of one file depend on. The data file is keyed by a hash of its content (not
// size + mtime): copies and touched files still hit, an edit with a preserved mtime still misses.
std::string cache_key(const Settings& s, DataFormat format, const std::string& data_hash) {
  const DataConfig& c = *s.config;
  std::string k = std::string(kPipelineVersion) + "\ntokenizer " + s.tokenizer_hash + "\ndata " + data_hash +
                  "\nformat " + to_string(format) + "\ntrain_on " + to_string(c.train_on) + "\nsource_max_len " +
                  std::to_string(c.source_max_len) + "\ntarget_max_len " + std::to_string(c.target_max_len) +
                  "\nmax_seq_len " + std::to_string(c.max_seq_len) + "\non_error " + to_string(c.on_error) + "\nbos " +
                  s.ctx.special.bos + "\neos " + s.ctx.special.eos;
  if (format == DataFormat::kMessages || format == DataFormat::kShareGpt) {
    k += "\ntemplate " + content_hash(s.ctx.chat.source) + " vars " + s.ctx.chat.vars.dump() + " now " + jinja::format_timestamp(s.ctx.chat.now);
    for (const auto& [name, tok] : s.ctx.chat.special_tokens) k += "\n" + name + " " + tok;
  }
  if (format == DataFormat::kShareGpt)
    for (const auto& [from, to] : c.sharegpt_role_map) k += "\nrole " + from + "=" + to;
  return k;
}

using Outcome = std::variant<TokenizeOutcome, std::string>;  // tokens, or the error message

// Renders and tokenizes records on all cores; the tokenizer is thread-safe. Results stay in record
// order, so errors and counts do not depend on scheduling.
std::vector<Outcome> tokenize_records(const std::vector<Record>& records, const Settings& s, const FormatContext& ctx,
                                      ProgressLine& progress) {
  std::vector<Outcome> out(records.size());
  std::atomic<size_t> next{0}, finished{0};
  std::exception_ptr failure;
  std::mutex failure_mutex;
  // The calling thread works too and is the one that draws the progress line.
  const auto caller = std::this_thread::get_id();
  auto work = [&] {
    for (;;) {
      const size_t begin = next.fetch_add(64);
      if (begin >= records.size()) return;
      const size_t end = std::min(records.size(), begin + 64);
      for (size_t i = begin; i < end; ++i) {
        try {
          const RenderedRecord rr = render_record(records[i], ctx);
          TokenizeOutcome t = tokenize_example(rr.example, *s.tok, s.config->max_seq_len, rr.split_to_max_len);
          t.unlocated_turns = rr.unlocated_turns;
          t.special_text_in_content = rr.special_text_in_content;
          out[i] = std::move(t);
        } catch (const InputError& e) {
          out[i] = std::string(e.what());
        } catch (...) {
          std::lock_guard<std::mutex> lock(failure_mutex);
          if (!failure) failure = std::current_exception();
        }
      }
      finished += end - begin;
      if (std::this_thread::get_id() == caller) progress.update(static_cast<int64_t>(finished.load()));
    }
  };
  const size_t threads = std::clamp<size_t>(std::thread::hardware_concurrency(), 1, 16);
  std::vector<std::thread> pool;
  for (size_t t = 1; t < std::min(threads, records.size() / 64 + 1); ++t) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  if (failure) std::rethrow_exception(failure);
  return out;
}

bool has_trained(const TokenizedExample& e, std::optional<int32_t> id) {
  if (!id) return false;
  for (size_t i = 0; i < e.ids.size(); ++i)
    if (e.ids[i] == *id && e.trained[i]) return true;
  return false;
}

CachedTokens tokenize_file(const DataFile& f, const Settings& s, const FormatContext& ctx) {
  CachedTokens c;
  const bool skip = s.config->on_error == OnError::kSkip;
  auto bad = [&](const std::string& msg) {
    if (!skip) throw InputError(msg);
    ++c.counts.skipped;
    if (c.counts.skipped_messages.size() < 5) c.counts.skipped_messages.push_back(msg);
  };
  std::vector<Record> records;
  read_records(f.path, [&](const Record& r) { records.push_back(r); }, [&](const std::string& msg) {
    ++c.counts.records;
    bad(msg);
  });
  c.counts.records += static_cast<int64_t>(records.size());
  ProgressLine progress(s.console, "tokenizing " + f.path.string(), static_cast<int64_t>(records.size()), "examples");
  const auto outcomes = tokenize_records(records, s, ctx, progress);
  progress.finish();
  const auto eos = s.tok->eos_id();
  for (const auto& o : outcomes) {
    if (const auto* msg = std::get_if<std::string>(&o)) {
      bad(*msg);
      continue;
    }
    const auto& t = std::get<TokenizeOutcome>(o);
    c.counts.truncated += t.truncated;
    c.counts.truncated_lost_eos += t.lost_eos;
    c.counts.unlocated_turns += t.unlocated_turns;
    c.counts.special_text_in_content += t.special_text_in_content;
    for (const auto& piece : t.pieces) {
      const int64_t labels = count_label_tokens(piece);
      if (labels == 0) {
        ++c.counts.dropped_no_labels;
        continue;
      }
      if (!t.truncated && !has_trained(piece, eos)) ++c.counts.without_trained_eos;
      ++c.counts.examples;
      c.counts.tokens += static_cast<int64_t>(piece.ids.size());
      c.counts.label_tokens += labels;
      c.examples.add(piece.ids, piece.trained);
    }
  }
  return c;
}

// The time strftime_now sees: data.template_date, or the first build's time pinned in the cache
// directory (the run's own by default), so a resumed run and `qtrain data preview` render the same text.
std::tm chat_template_time(const DataConfig& config, const std::filesystem::path& cache_dir) {
  if (!config.template_date.empty()) return jinja::parse_timestamp(config.template_date, "data.template_date");
  const auto pin = cache_dir / "chat_template_date";
  if (std::filesystem::exists(pin)) {
    std::string text = read_file_bytes(pin);
    while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
    return jinja::parse_timestamp(text, pin.string());
  }
  const std::time_t t = std::time(nullptr);
  std::tm now{};
  localtime_r(&t, &now);
  std::filesystem::create_directories(cache_dir);
  write_file_atomic(pin, jinja::format_timestamp(now) + "\n");
  return jinja::parse_timestamp(jinja::format_timestamp(now), pin.string());
}

CachedTokens load_or_build(const DataFile& f, const Settings& s, const std::filesystem::path& cache_dir, DataReport& r) {
  FormatContext ctx = s.ctx;
  ctx.format = f.format.value_or(s.config->format);
  const std::string key = cache_key(s, ctx.format, content_hash(read_file_bytes(f.path)));
  const auto cache_file = cache_dir / (f.path.stem().string() + "-" + content_hash(key) + ".h5");
  std::string why;
  if (auto hit = read_token_cache(cache_file, key, &why)) {
    ++r.cache_hits;
    r.cache_files.push_back(cache_file.string());
    return std::move(*hit);
  }
  if (why != "no cache file") r.warnings.push_back(cache_file.string() + ": token cache " + why + "; rebuilt");
  ++r.cache_misses;
  CachedTokens built = tokenize_file(f, s, ctx);
  try {
    write_token_cache(cache_file, key, built);
    r.cache_files.push_back(cache_file.string());
  } catch (const std::exception& e) {
    r.warnings.push_back(std::string(e.what()) + " (going on without a cache)");
  }
  return built;
}

void append(ExampleSet& dst, const ExampleSet& src, const std::vector<int64_t>& which) {
  for (int64_t i : which) {
    const auto v = src.at(i);
    dst.add(v.ids, v.trained);
  }
}

[[noreturn]] void nothing_to_train(const std::vector<DataFile>& files, const FileCounts& c, const DataConfig& cfg) {
  std::string names;
  for (const auto& f : files) names += (names.empty() ? "" : ", ") + f.path.string();
  throw InputError(names + ": no example has a trained token (" + std::to_string(c.records) + " records, " +
                   std::to_string(c.dropped_no_labels) + " dropped because nothing is left to train, " +
                   std::to_string(c.skipped) + " skipped); check data.train_on (" + to_string(cfg.train_on) +
                   "), data.source_max_len / target_max_len / max_seq_len and the roles in the data");
}

}  // namespace

std::filesystem::path default_data_cache_dir() {
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return std::filesystem::path(x) / "qtrain" / "data";
  if (const char* h = std::getenv("HOME"); h && *h) return std::filesystem::path(h) / ".cache" / "qtrain" / "data";
  return std::filesystem::temp_directory_path() / "qtrain-data-cache";
}

TokenizedDataset build_dataset(const DataConfig& config, const Tokenizer& tok, const std::filesystem::path& model_dir,
                               DataReport* report, const ConsoleOptions& console) {
  if (const auto problems = data_config_problems(config); !problems.empty()) {
    std::string msg = "data section:";
    for (const auto& [k, m] : problems) msg += "\n  data." + k + ": " + m;
    throw UsageError(msg);
  }
  DataReport local;
  DataReport& r = report ? *report : local;
  Settings s{&config, &tok, {}, hash_tokenizer_files(model_dir), console};
  s.ctx.train_on = config.train_on;
  s.ctx.config = &config;
  r.bos_id = tok.bos_id();
  r.eos_id = tok.eos_id();
  r.pad_id = tok.pad_id();
  if (r.bos_id) s.ctx.special.bos = tok.id_to_token(*r.bos_id);
  if (r.eos_id) s.ctx.special.eos = tok.id_to_token(*r.eos_id);
  else r.warnings.push_back("the tokenizer has no EOS token: examples end without one and the model cannot learn to stop");
  // Labels come from the trained mask, never from `ids != pad`, so a pad equal to EOS cannot hide
  // the EOS labels (the classic silent failure); padding is marked by label -100 and segment -1.
  if (r.pad_id && r.eos_id && *r.pad_id == *r.eos_id)
    r.pad_action = "pad token == EOS (id " + std::to_string(*r.pad_id) +
                   "): labels come from the trained mask, not from ids != pad, so EOS stays trained; padding uses id " +
                   std::to_string(*r.pad_id) + " with label -100";
  else if (!r.pad_id)
    r.pad_action = "the tokenizer has no pad token: padding uses id " + std::to_string(r.eos_id.value_or(0)) +
                   (r.eos_id ? " (EOS)" : "") + " with label -100 and segment -1 (the id itself is never attended to or trained)";
  r.pad_used = r.pad_id.value_or(r.eos_id.value_or(0));

  const auto cache_dir = config.cache_dir.empty() ? default_data_cache_dir() : config.cache_dir;
  bool needs_template = false;
  for (const auto* files : {&config.files, &config.eval_files})
    for (const auto& f : *files) {
      const auto fmt = f.format.value_or(config.format);
      needs_template |= fmt == DataFormat::kMessages || fmt == DataFormat::kShareGpt;
    }
  r.format = to_string(config.format);
  if (needs_template) {
    const std::tm now = chat_template_time(config, cache_dir);
    s.ctx.chat = resolve_chat_template(chat_template_spec(config), model_dir, template_vars_json(config), now,
                                       config.chat_template.empty() ? "data.template_name" : "data.chat_template");
    r.template_used = s.ctx.chat.name + " (" + s.ctx.chat.origin + "), strftime_now at " + jinja::format_timestamp(now);
  } else {
    r.template_used = "none (format " + r.format + " has its own prompt)";
  }

  // Train files, each with its examples' range in `all`.
  ExampleSet all;
  all.pad_id = r.pad_used;
  std::vector<std::pair<int64_t, int64_t>> ranges;
  for (const auto& f : config.files) {
    CachedTokens c = load_or_build(f, s, cache_dir, r);
    r.train_files.add(c.counts);
    const int64_t begin = all.size();
    append(all, c.examples, [&] { std::vector<int64_t> v(c.examples.size()); std::iota(v.begin(), v.end(), 0); return v; }());
    ranges.emplace_back(begin, all.size());
  }
  if (all.size() == 0) nothing_to_train(config.files, r.train_files, config);

  auto eval = std::make_shared<ExampleSet>();
  eval->pad_id = r.pad_used;
  std::vector<uint8_t> held_out(static_cast<size_t>(all.size()), 0);
  if (!config.eval_files.empty()) {
    for (const auto& f : config.eval_files) {
      CachedTokens c = load_or_build(f, s, cache_dir, r);
      r.eval_files.add(c.counts);
      std::vector<int64_t> v(c.examples.size());
      std::iota(v.begin(), v.end(), 0);
      append(*eval, c.examples, v);
    }
    if (eval->size() == 0) nothing_to_train(config.eval_files, r.eval_files, config);
  } else if (config.eval_fraction > 0) {
    int64_t n_eval = std::llround(config.eval_fraction * static_cast<double>(all.size()));
    n_eval = std::clamp<int64_t>(n_eval, 1, all.size() - 1);
    if (all.size() < 2) throw InputError("data.eval_fraction: only one example: nothing can be held out for evaluation");
    auto perm = permutation(all.size(), derive_seed(config.seed, 1));
    perm.resize(static_cast<size_t>(n_eval));
    std::sort(perm.begin(), perm.end());
    for (int64_t i : perm) held_out[static_cast<size_t>(i)] = 1;
    append(*eval, all, perm);
  }

  // Weights: the integer part as whole copies, the fraction as a seeded subset of the file.
  auto train = std::make_shared<ExampleSet>();
  train->pad_id = r.pad_used;
  for (size_t fi = 0; fi < ranges.size(); ++fi) {
    std::vector<int64_t> kept;
    for (int64_t i = ranges[fi].first; i < ranges[fi].second; ++i)
      if (!held_out[static_cast<size_t>(i)]) kept.push_back(i);
    const double w = config.files[fi].weight;
    const auto copies = static_cast<int64_t>(std::floor(w));
    for (int64_t k = 0; k < copies; ++k) append(*train, all, kept);
    const auto extra = static_cast<int64_t>(std::llround((w - static_cast<double>(copies)) * static_cast<double>(kept.size())));
    if (extra > 0) {
      auto perm = permutation(static_cast<int64_t>(kept.size()), derive_seed(config.seed, 100 + fi));
      perm.resize(static_cast<size_t>(extra));
      std::sort(perm.begin(), perm.end());
      std::vector<int64_t> subset;
      for (int64_t p : perm) subset.push_back(kept[static_cast<size_t>(p)]);
      append(*train, all, subset);
    }
  }
  if (train->size() == 0) nothing_to_train(config.files, r.train_files, config);
  r.train_examples = train->size();
  r.eval_examples = eval->size();
  return {std::move(train), std::move(eval)};
}

}  // namespace qtrain
