// A repository revision made local: the revision resolved to a commit, the files qtrain needs chosen
// from the repository's listing, each one fetched into the cache (hub_cache.h), and the snapshot folder
// returned. Offline (HF_HUB_OFFLINE=1), and when the Hub cannot be reached, the same choice is made
// from the cached snapshot instead, and a missing file is named.
//
// What a model needs: config.json (or adapter_config.json for a PEFT adapter), the safetensors weights
// (model.safetensors.index.json and every shard in its weight_map, or model.safetensors, or
// adapter_model.safetensors), the tokenizer files present (tokenizer.json, tokenizer.model,
// tokenizer_config.json, special_tokens_map.json, added_tokens.json, vocab.json, merges.txt,
// chat_template.jinja / .json), generation_config.json and quantize_config.json when present. Nothing
// else: huggyllama/llama-7b also holds its weights as pytorch_model-*.bin, which qtrain never reads.
//
// What a dataset needs: the named file, or the repository's data files in a format qtrain reads (from the
// Hub's listing, even for a commit hash: the cache may hold only some of them; offline, the cached ones, said in a note)
// (.jsonl, .json, .txt); when some of them are a train split by name ("train" between separators, as
// the datasets library decides splits), only those.
#pragma once

#include <filesystem>
#include <ostream>
#include <string>
#include <vector>

#include "data/hub/hub_id.h"
#include "data/hub/hub_settings.h"

namespace qtrain::hub {

struct Snapshot {
  std::string commit;
  std::filesystem::path dir;                // <cache>/models--org--name/snapshots/<commit>
  std::vector<std::string> files;           // paths in the repository, as chosen (sorted)
};

// Which files of `listing` a model or a dataset reference needs. `read_index` returns the text of
// model.safetensors.index.json once it is local. Throws UsageError when something required is absent
// (no config.json, no safetensors weights, no data file of a supported format), naming the repo and
// what it has instead.
std::vector<std::string> choose_files(const HubRef& ref, const std::vector<std::string>& listing);
std::vector<std::string> shards_of_index(const std::string& index_json, const std::string& where);

// Resolves and fetches. `log` receives progress (DownloadProgress) and notes; `log_is_terminal` rewrites
// lines in place. Throws UsageError / Error as described in hub_api.h.
// `only`: just these files of the repository (e.g. {"config.json"} for `qtrain plan`), not the choice above.
Snapshot fetch_snapshot(const HubRef& ref, const HubSettings& settings, std::ostream& log, bool log_is_terminal,
                        const std::vector<std::string>& only = {});

}  // namespace qtrain::hub
