#include "trainer/train.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>

#include <chrono>
#include <cmath>
#include <iostream>
#include <regex>

#include "data/io/atomic_file.h"
#include "data/dataset/batching.h"
#include "data/dataset/data_report.h"
#include "data/dataset/dataset.h"
#include "data/error.h"
#include "data/tokenizer/tokenizer.h"
#include "ops/adamw.h"
#include "trainer/loss.h"
#include "trainer/lr_schedule.h"
#include "trainer/metrics_log.h"
#include "trainer/model/model.h"
#include "data/io/peft_adapter.h"
#include "trainer/stop_signal.h"
#include "data/io/trainer_state.h"

namespace qtrain {
namespace fs = std::filesystem;

namespace {

struct Resolved {
  at::Device device = at::kCPU;
  at::ScalarType compute = at::kFloat;
  at::ScalarType lora = at::kFloat;
};

Resolved resolve(const Recipe& r) {
  Resolved out;
  const bool cuda = at::hasCUDA();
  switch (r.training.device) {
    case DeviceChoice::kAuto: out.device = cuda ? at::Device(at::kCUDA) : at::Device(at::kCPU); break;
    case DeviceChoice::kCpu: out.device = at::kCPU; break;
    case DeviceChoice::kCuda:
      if (!cuda) throw UsageError(r.source.string() + ": training.device: cuda, but no CUDA device is available");
      out.device = at::Device(at::kCUDA);
      break;
  }
  switch (r.training.compute_dtype) {
    case DtypeChoice::kAuto: out.compute = out.device.is_cuda() ? at::kBFloat16 : at::kFloat; break;
    case DtypeChoice::kFloat32: out.compute = at::kFloat; break;
    case DtypeChoice::kBFloat16: out.compute = at::kBFloat16; break;
  }
  out.lora = r.lora.dtype == DtypeChoice::kBFloat16 ? at::kBFloat16 : at::kFloat;
  return out;
}

std::vector<std::string> target_short_names(const Recipe& r) {
  const std::vector<std::string> all = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  for (const auto& t : r.model.target_modules)
    if (t == "all-linear") return all;
  return r.model.target_modules;
}

// Checkpoints are <output>/checkpoints/step-N; the latest is the largest N.
std::optional<fs::path> latest_checkpoint(const fs::path& dir) {
  std::optional<fs::path> best;
  int64_t best_step = -1;
  if (!fs::exists(dir)) return best;
  static const std::regex re("step-([0-9]+)");
  for (const auto& e : fs::directory_iterator(dir)) {
    std::smatch m;
    const std::string name = e.path().filename().string();
    if (e.is_directory() && std::regex_match(name, m, re) && fs::exists(e.path() / "trainer_state.h5")) {
      const int64_t s = std::stoll(m[1]);
      if (s > best_step) best_step = s, best = e.path();
    }
  }
  return best;
}

class Trainer {
 public:
  Trainer(const Recipe& r, const TrainOptions& o) : r_(r), opts_(o), dev_(resolve(r)) {}

  TrainResult run() {
    const fs::path out = r_.output_dir;
    const fs::path model_dir = r_.model.path;
    if (!fs::is_directory(model_dir))
      throw UsageError(r_.source.string() + ": model.path '" + model_dir.string() + "' is not a directory");
    const ModelConfig mcfg = parse_model_config(model_dir / "config.json");
    auto tok = load_tokenizer(model_dir);

    DataConfig dcfg = r_.data;
    if (dcfg.cache_dir.empty()) dcfg.cache_dir = out / "cache";
    DataReport report;
    TokenizedDataset ds = build_dataset(dcfg, *tok, model_dir, &report);
    std::cerr << format_report(report);
    if (opts_.dry_run) {
      std::cerr << "dry run: recipe, model config (" << family_name(mcfg.family) << ", " << mcfg.num_hidden_layers
                << " layers), tokenizer and data are valid; " << ds.train->size() << " training examples\n";
      return {};
    }

    // Never mix two runs in one directory: a finished or interrupted run is continued or moved aside.
    if (!opts_.resume && latest_checkpoint(out / "checkpoints"))
      throw UsageError(out.string() + " already holds checkpoints of a run: continue it with --resume, or choose another "
                       "output_dir (--set output_dir=...)");
    fs::create_directories(out);
    write_file_atomic(out / "config.yaml", "# resolved by qtrain from " + r_.source.string() + "\n" + recipe_to_yaml(r_));

    LoadOptions lo;
    lo.dtype = dev_.compute;
    lo.device = dev_.device;
    if (r_.quantization.enabled)
      lo.quantize = ops::QuantParams{r_.quantization.quant_type, r_.quantization.blocksize, r_.quantization.double_quant};
    const auto t_load = std::chrono::steady_clock::now();
    model_ = std::make_unique<LlamaModel>(LlamaModel::load(model_dir, lo));
    const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();

    LoraSpec spec;
    spec.targets = r_.model.target_modules;
    spec.config.rank = r_.lora.r;
    spec.config.alpha = r_.lora.alpha;
    spec.config.dropout = r_.lora.dropout;
    spec.config.scaling = r_.lora.rslora ? ops::LoraScaling::kRsLora : ops::LoraScaling::kStandard;
    spec.dtype = dev_.lora;
    model_->add_lora(spec, at::make_generator<at::CPUGeneratorImpl>(r_.lora.init_seed.value_or(r_.training.seed)));
    params_ = model_->lora_parameters();
    for (const auto& [name, p] : params_) states_.push_back(ops::make_adamw_state(p));
    // The dropout stream lives on the training device (masks drawn where they are used); its state is
    // saved in checkpoints and replayed by recompute either way.
    if (dev_.device.is_cuda()) {
      dropout_gen_ = at::globalContext().defaultGenerator(dev_.device).clone();
      dropout_gen_.set_current_seed(r_.training.seed + 1);
    } else {
      dropout_gen_ = at::make_generator<at::CPUGeneratorImpl>(r_.training.seed + 1);
    }

    Loader loader(ds.train, r_.training.micro_batch_size, dcfg, dcfg.seed, /*rank=*/0, /*world=*/1);
    const int64_t k = r_.training.gradient_accumulation;
    const int64_t total = r_.training.max_steps > 0
                              ? r_.training.max_steps
                              : std::max<int64_t>(1, static_cast<int64_t>(std::ceil(r_.training.epochs * loader.batches_per_epoch() / k)));
    int64_t step = 0, tokens = 0;
    bool append_log = false;
    if (opts_.resume) {
      fs::path ck = *opts_.resume;
      if (!fs::exists(ck / "trainer_state.h5")) {
        auto latest = latest_checkpoint(ck / "checkpoints");
        if (!latest) latest = latest_checkpoint(out / "checkpoints");
        if (!latest) throw UsageError("--resume: no checkpoint found in " + ck.string() + " or " + (out / "checkpoints").string());
        ck = *latest;
      }
      // Resuming an older checkpoint while newer ones of the abandoned continuation exist would mix two
      // trajectories in one directory (keep-last and the next --resume would pick the stale one).
      if (auto latest = latest_checkpoint(out / "checkpoints"); latest && fs::weakly_canonical(*latest) != fs::weakly_canonical(ck) &&
                                                               fs::weakly_canonical(ck.parent_path()) == fs::weakly_canonical(out / "checkpoints"))
        throw UsageError("--resume " + ck.string() + ": " + latest->string() +
                         " is newer; resume from it, or move the newer checkpoints away first");
      restore(ck, &loader, &step, &tokens);
      append_log = true;
      std::cerr << "resumed from " << ck.string() << " at step " << step << "\n";
    }
    MetricsLog log(out / "metrics.jsonl", total, true, append_log);
    log.message("qtrain: " + std::string(family_name(mcfg.family)) + " " + model_dir.string() + " on " +
                dev_.device.str() + " (" + c10::toString(dev_.compute) + "), base " +
                (r_.quantization.enabled ? "NF4" : "dense") + " loaded in " + std::to_string(load_s).substr(0, 5) + " s, " +
                std::to_string(params_.size() / 2) + " LoRA adapters, " + std::to_string(total) + " steps × " +
                std::to_string(k) + " × " + std::to_string(r_.training.micro_batch_size));

    if (r_.optimizer.paged)
      log.message("note: optimizer.paged: the optimizer state stays on the training device (paging is not implemented yet)");
    TrainResult result;
    if (ds.eval && ds.eval->size() > 0) {
      auto [l, a] = evaluate(ds.eval, dcfg);
      result.eval_loss_first = l;
      result.eval_acc_first = a;
      log.record("eval", step, {{"eval_loss", l}, {"eval_ppl", std::exp(l)}, {"eval_token_acc", a}});
    }

    StopSignalGuard stop;
    RunContext ctx;
    ctx.training = true;
    ctx.recompute = r_.training.recompute;
    ctx.dropout_gen = dropout_gen_;
    const auto t0 = std::chrono::steady_clock::now();
    const int64_t start_step = step;
    int64_t tokens_since = 0;
    auto t_last = t0;
    double last_loss = NAN;
    int skipped_in_a_row = 0;
    while (step < total && !stop.requested()) {
      // One optimizer step: k micro-batches, the loss averaged over all their target tokens.
      std::vector<Batch> batches;
      int64_t step_tokens = 0;
      for (int64_t i = 0; i < k; ++i) {
        batches.push_back(loader.next());
        step_tokens += batches.back().num_target_tokens;
      }
      for (auto& [name, p] : params_) p.mutable_grad() = at::Tensor();
      double loss_sum = 0;
      for (const Batch& b : batches) {
        if (b.num_target_tokens == 0) continue;
        at::Tensor hidden = model_->hidden_states(b.input_ids, b.segment_ids, b.positions, &ctx);
        LossSum ls = causal_lm_loss_backward(*model_, hidden, b.labels, 1.0 / static_cast<double>(std::max<int64_t>(1, step_tokens)));
        loss_sum += ls.sum.item<double>();
      }
      const double loss = step_tokens > 0 ? loss_sum / step_tokens : 0.0;
      std::vector<at::Tensor> squares;  // one device sync for the global norm, not one per tensor
      for (auto& [name, p] : params_)
        if (p.grad().defined()) squares.push_back(p.grad().to(at::kFloat).pow(2).sum());
      const double gnorm = squares.empty() ? 0.0 : at::stack(squares).sum().sqrt().item<double>();
      if (!std::isfinite(loss) || !std::isfinite(gnorm)) {
        if (r_.training.on_nan == NanPolicy::kStop) {
          log.message("error: loss or gradient is not finite at step " + std::to_string(step + 1) +
                      "; stopping (the last checkpoint is intact; training.on_nan: skip would skip such steps)");
          throw Error(ExitCode::kFailure, "non-finite loss at step " + std::to_string(step + 1));
        }
        // Skipped: the batch is consumed but no update happens, so the step counter (schedule, Adam's
        // bias correction, checkpoints) keeps counting updates. A run that only produces NaN stops.
        log.message("warning: non-finite loss or gradient at step " + std::to_string(step + 1) + "; batch skipped");
        if (++skipped_in_a_row > 10)
          throw Error(ExitCode::kFailure, "more than 10 consecutive non-finite steps at step " + std::to_string(step + 1) +
                                              "; stopping (the last checkpoint is intact)");
        continue;
      }
      skipped_in_a_row = 0;
      // Global-norm clipping as transformers does it: scale = max_norm / (norm + 1e-6), capped at 1.
      const double clip = r_.training.max_grad_norm > 0 ? std::min(1.0, r_.training.max_grad_norm / (gnorm + 1e-6)) : 1.0;
      const double lr = learning_rate_at(r_.training.schedule, r_.training.learning_rate, step, r_.training.warmup_steps, total);
      ops::AdamWParams ap{lr, r_.optimizer.beta1, r_.optimizer.beta2, r_.optimizer.eps, r_.training.weight_decay};
      for (std::size_t i = 0; i < params_.size(); ++i) {
        at::Tensor& p = params_[i].second;
        if (!p.grad().defined()) continue;
        ops::adamw_step(p, p.grad(), states_[i], step + 1, ap, clip);
      }
      ++step;
      tokens += step_tokens;
      tokens_since += step_tokens;
      last_loss = loss;

      if (step % r_.schedule.log_every == 0 || step == total) {
        const auto now = std::chrono::steady_clock::now();
        const double dt = std::chrono::duration<double>(now - t_last).count();
        const double elapsed = std::chrono::duration<double>(now - t0).count();
        log.record("train", step, {{"loss", loss}, {"lr", lr}, {"grad_norm", gnorm}, {"tokens_per_s", tokens_since / std::max(dt, 1e-9)},
                                    {"peak_mem_mib", peak_host_memory_mib()}, {"tokens", static_cast<double>(tokens)},
                                    {"eta_s", elapsed / std::max<int64_t>(1, step - start_step) * (total - step)}});
        t_last = now;
        tokens_since = 0;
      }
      if (ds.eval && ds.eval->size() > 0 && r_.schedule.eval_every > 0 && step % r_.schedule.eval_every == 0 && step != total) {
        auto [l, a] = evaluate(ds.eval, dcfg);
        log.record("eval", step, {{"eval_loss", l}, {"eval_ppl", std::exp(l)}, {"eval_token_acc", a}});
      }
      if (r_.schedule.save_every > 0 && step % r_.schedule.save_every == 0 && step != total)
        save_checkpoint(out, step, tokens, loader, log);
    }
    result.interrupted = stop.requested();
    result.steps = step;
    result.final_loss = last_loss;
    if (step != last_saved_step_) save_checkpoint(out, step, tokens, loader, log);
    if (result.interrupted) {
      log.message("stopped by signal " + std::to_string(stop.signal()) + " at step " + std::to_string(step) +
                  "; resume with: qtrain train " + r_.source.string() + " --resume");
      return result;
    }
    if (ds.eval && ds.eval->size() > 0) {
      auto [l, a] = evaluate(ds.eval, dcfg);
      result.eval_loss_last = l;
      result.eval_acc_last = a;
      log.record("eval", step, {{"eval_loss", l}, {"eval_ppl", std::exp(l)}, {"eval_token_acc", a}});
    }
    save_peft_adapter(out / "adapter", params_, adapter_info(), dev_.lora);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::string summary = "done: " + std::to_string(step) + " steps in " + std::to_string(static_cast<int>(secs)) + " s, " +
                          std::to_string(tokens) + " target tokens, final loss " + std::to_string(last_loss);
    if (result.eval_loss_first)
      summary += "\n  held-out loss " + std::to_string(*result.eval_loss_first) + " → " + std::to_string(*result.eval_loss_last) +
                 ", next-token accuracy " + std::to_string(100 * *result.eval_acc_first).substr(0, 5) + "% → " +
                 std::to_string(100 * *result.eval_acc_last).substr(0, 5) + "%";
    summary += "\n  adapter (PEFT): " + (out / "adapter").string();
    log.message(summary);
    return result;
  }

 private:
  AdapterInfo adapter_info() const {
    AdapterInfo info;
    info.r = r_.lora.r;
    info.alpha = r_.lora.alpha;
    info.dropout = r_.lora.dropout;
    info.rslora = r_.lora.rslora;
    info.target_modules = target_short_names(r_);
    info.base_model = r_.model.path.string();
    return info;
  }

  // Mean loss and next-token accuracy over the held-out targets (no dropout, no grad).
  std::pair<double, double> evaluate(const std::shared_ptr<const ExampleSet>& data, const DataConfig& dcfg) {
    at::NoGradGuard ng;
    Loader loader(data, r_.training.micro_batch_size, dcfg, dcfg.seed, 0, 1, /*shuffle=*/false);
    int64_t n = loader.batches_per_epoch();
    if (r_.schedule.eval_batches > 0) n = std::min(n, r_.schedule.eval_batches);
    double sum = 0;
    int64_t correct = 0, count = 0;
    for (int64_t i = 0; i < n; ++i) {
      Batch b = loader.next();
      if (b.num_target_tokens == 0) continue;
      LossSum ls = causal_lm_loss(*model_, model_->hidden_states(b.input_ids, b.segment_ids, b.positions, nullptr), b.labels);
      sum += ls.sum.item<double>();
      correct += ls.correct.item<int64_t>();
      count += ls.tokens;
    }
    return {count ? sum / count : NAN, count ? static_cast<double>(correct) / count : NAN};
  }

  void save_checkpoint(const fs::path& out, int64_t step, int64_t tokens, const Loader& loader, MetricsLog& log) {
    const fs::path dir = out / "checkpoints";
    fs::create_directories(dir);
    const fs::path final_dir = dir / ("step-" + std::to_string(step));
    const fs::path tmp = dir / (".step-" + std::to_string(step) + ".tmp");
    fs::remove_all(tmp);
    fs::create_directories(tmp);
    // Master weights in their own dtype, so a resume continues from exactly these numbers.
    save_peft_adapter(tmp / "adapter", params_, adapter_info(), params_.empty() ? at::kFloat : params_[0].second.scalar_type());
    TrainerState s;
    s.step = step;
    s.tokens = tokens;
    const Cursor c = loader.cursor();
    s.cursor_epoch = c.epoch;
    s.cursor_position = c.position;
    s.cursor_seed = c.seed;
    s.rng_state = dropout_gen_.get_state();
    s.recipe_hash = recipe_hash(r_);
    for (std::size_t i = 0; i < params_.size(); ++i)
      s.optimizer.push_back({params_[i].first, states_[i].exp_avg, states_[i].exp_avg_sq});
    save_trainer_state(tmp / "trainer_state.h5", s);
    fs::remove_all(final_dir);
    fs::rename(tmp, final_dir);
    // Keep the last K.
    std::vector<std::pair<int64_t, fs::path>> all;
    static const std::regex re("step-([0-9]+)");
    for (const auto& e : fs::directory_iterator(dir)) {
      std::smatch m;
      const std::string name = e.path().filename().string();
      if (std::regex_match(name, m, re)) all.emplace_back(std::stoll(m[1]), e.path());
    }
    std::sort(all.begin(), all.end());
    for (std::size_t i = 0; i + r_.schedule.keep_last < all.size() && r_.schedule.keep_last > 0; ++i) fs::remove_all(all[i].second);
    last_saved_step_ = step;
    log.message("checkpoint: " + final_dir.string());
  }

  void restore(const fs::path& ck, Loader* loader, int64_t* step, int64_t* tokens) {
    TrainerState s = load_trainer_state(ck / "trainer_state.h5");
    if (s.recipe_hash != recipe_hash(r_))
      throw UsageError(ck.string() + " was written with a different recipe (hash " + s.recipe_hash + ", now " + recipe_hash(r_) +
                       "); resume needs the same model, data, LoRA and training settings");
    AdapterInfo info;
    NamedTensors saved = load_peft_adapter(ck / "adapter", &info);
    std::map<std::string, at::Tensor> by_name(saved.begin(), saved.end());
    if (s.optimizer.size() != params_.size()) throw InputError(ck.string() + ": optimizer state has " + std::to_string(s.optimizer.size()) + " parameters, the model " + std::to_string(params_.size()));
    at::NoGradGuard ng;
    for (std::size_t i = 0; i < params_.size(); ++i) {
      const auto& [name, p] = params_[i];
      auto it = by_name.find(name);
      if (it == by_name.end() || it->second.sizes() != p.sizes())
        throw InputError(ck.string() + ": adapter tensor '" + name + "' missing or of another shape");
      if (s.optimizer[i].name != name) throw InputError(ck.string() + ": optimizer state " + std::to_string(i) + " is for '" + s.optimizer[i].name + "', expected '" + name + "'");
      // copy_ would broadcast a wrongly shaped state silently: check first.
      if (s.optimizer[i].exp_avg.sizes() != p.sizes() || s.optimizer[i].exp_avg_sq.sizes() != p.sizes())
        throw InputError((ck / "trainer_state.h5").string() + ": optimizer/" + std::to_string(i) + " ('" + name + "') has shape " +
                         c10::str(s.optimizer[i].exp_avg.sizes()) + ", the parameter " + c10::str(p.sizes()));
      p.copy_(it->second);
      states_[i].exp_avg.copy_(s.optimizer[i].exp_avg);
      states_[i].exp_avg_sq.copy_(s.optimizer[i].exp_avg_sq);
    }
    if (s.rng_state.defined()) dropout_gen_.set_state(s.rng_state);
    loader->restore(Cursor{s.cursor_epoch, s.cursor_position, s.cursor_seed});
    *step = s.step;
    *tokens = s.tokens;
    last_saved_step_ = s.step;
  }

  const Recipe& r_;
  const TrainOptions& opts_;
  Resolved dev_;
  std::unique_ptr<LlamaModel> model_;
  std::vector<std::pair<std::string, at::Tensor>> params_;
  std::vector<ops::AdamWState> states_;
  at::Generator dropout_gen_;
  int64_t last_saved_step_ = -1;  // a step already on disk is not written twice
};

}  // namespace

TrainResult train(const Recipe& recipe, const TrainOptions& options) { return Trainer(recipe, options).run(); }

}  // namespace qtrain
