#include "trainer/train.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>

#include <chrono>

#if defined(QTRAIN_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif
#include <cmath>
#include <iostream>

#include "data/dataset/batching.h"
#include "data/dataset/data_report.h"
#include "data/dataset/dataset.h"
#include "data/error.h"
#include "data/io/atomic_file.h"
#include "data/io/directory_lock.h"
#include "data/tokenizer/tokenizer.h"
#include "trainer/checkpointer.h"
#include "trainer/distributed.h"
#include "trainer/distributed_env.h"
#include "trainer/evaluate.h"
#include "trainer/lr_schedule.h"
#include "trainer/metrics_log.h"
#include "trainer/model/linear_modules.h"
#include "trainer/model/model.h"
#include "trainer/memory_plan.h"
#include "trainer/optimizer.h"
#include "trainer/paged_state.h"
#include "trainer/run_data_report.h"
#include "trainer/run_report.h"
#include "trainer/step.h"
#include "trainer/stop_signal.h"

namespace qtrain {
namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

struct Placement {
  at::Device device = at::kCPU;
  at::ScalarType compute = at::kFloat;  // activations and dense weights
  at::ScalarType lora = at::kFloat;     // adapter weights
};

Placement resolve_placement(const Recipe& r) {
  Placement out;
  const bool cuda = at::hasCUDA();
  switch (r.training.device) {
    case DeviceChoice::kAuto: out.device = cuda ? rank_cuda_device() : at::Device(at::kCPU); break;
    case DeviceChoice::kCpu: out.device = at::kCPU; break;
    case DeviceChoice::kCuda:
      if (!cuda) throw UsageError(r.source.string() + ": training.device: cuda, but no CUDA device is available");
      out.device = rank_cuda_device();  // cuda:LOCAL_RANK under torchrun / srun
      break;
  }
  const bool on_cuda = out.device.is_cuda();
  out.compute = resolved_compute_dtype(r.training, on_cuda) == DtypeChoice::kBFloat16 ? at::kBFloat16 : at::kFloat;
  out.lora = resolved_lora_dtype(r, on_cuda) == DtypeChoice::kBFloat16 ? at::kBFloat16 : at::kFloat;
  return out;
}

// training.tf32 for as long as a CUDA run trains: cuBLAS and cuDNN may round fp32 matmul inputs to TF32.
// libtorch keeps the switch in its global context, so the previous values come back at the end (an
// export after training, in the same process, runs GPTQ/AWQ in exact fp32).
class Tf32Scope {
 public:
  explicit Tf32Scope(bool on)
      : cublas_(at::globalContext().allowTF32CuBLAS()), cudnn_(at::globalContext().allowTF32CuDNN()) {
    at::globalContext().setAllowTF32CuBLAS(on);
    at::globalContext().setAllowTF32CuDNN(on);
  }
  ~Tf32Scope() {
    at::globalContext().setAllowTF32CuBLAS(cublas_);
    at::globalContext().setAllowTF32CuDNN(cudnn_);
  }
  Tf32Scope(const Tf32Scope&) = delete;
  Tf32Scope& operator=(const Tf32Scope&) = delete;

 private:
  const bool cublas_, cudnn_;
};

AdapterInfo adapter_info(const Recipe& r) {
  AdapterInfo info;
  info.r = r.lora.r;
  info.alpha = r.lora.alpha;
  info.dropout = r.lora.dropout;
  info.rslora = r.lora.rslora;
  info.target_modules = resolve_target_modules(r.model.target_modules);
  // PEFT's base_model_name_or_path: the Hub id when the recipe named one (as peft writes it), else the directory.
  info.base_model = (r.as_written ? r.as_written->model_path : r.model.path).string();
  return info;
}

// The dropout stream lives on the training device (masks are drawn where they are used). Its state
// is saved in checkpoints and replayed by recompute either way.
at::Generator make_dropout_generator(const at::Device& device, uint64_t seed) {
  if (!device.is_cuda()) return at::make_generator<at::CPUGeneratorImpl>(seed);
  at::Generator g = at::globalContext().defaultGenerator(device).clone();
  g.set_current_seed(seed);
  return g;
}

class Trainer {
 public:
  static constexpr int kMaxSkippedInARow = 10;  // training.on_nan: skip gives up after this many

  Trainer(const Recipe& r, const TrainOptions& o)
      : r_(r), opts_(o), place_(resolve_placement(r)), tf32_(place_.device.is_cuda() && r.training.tf32), out_(r.output_dir), checkpoints_(out_, r.schedule.keep_last, recipe_hash(r)) {}

  // set up → for each step { step, log, maybe eval, maybe checkpoint, check stop } → finish.
  TrainResult run() {
    // Installed first: a signal during set-up (loading a large model takes minutes) ends the run
    // cleanly once set-up is done, and a second one at once.
    StopSignalGuard stop;
    auto stopping = [&] { return stop.requested(); };
    if (!set_up()) return {};
    // Ranks agree on stopping at step boundaries only (trainer/distributed.h); one process is unchanged.
    if (ranks_->agree_stop(stop.requested(), stop.signal())) return interrupted(stop);
    // The evaluation before the first step, or one a stop interrupted before the checkpoint it resumed.
    if (eval_due() && !evaluate_and_log(stopping)) return interrupted(stop);
    const auto t0 = Clock::now();
    while (step_ < total_ && !ranks_->agree_stop(stop.requested(), stop.signal())) {
      const int64_t skipped_before = skipped_in_a_row_;
      const StepResult s = one_step(stopping);
      if (s.interrupted) break;
      if (skipped_in_a_row_ > skipped_before) continue;  // a non-finite step: nothing applied
      log_step(s, t0);
      if (eval_due() && !evaluate_and_log(stopping)) break;
      if (due(r_.schedule.save_every)) save();
    }
    if (ranks_->agree_stop(stop.requested(), stop.signal())) return interrupted(stop);
    return finish(t0, stopping, stop);
  }

 private:
  // Everything before the first step. Returns false for a dry run.
  bool set_up() {
    const fs::path model_dir = r_.model.path;
    if (!fs::is_directory(model_dir))
      throw UsageError(r_.source.string() + ": model.path '" + model_dir.string() + "' is not a directory");
    const ModelConfig mcfg = parse_model_config(model_dir / "config.json");
    const auto tok = load_tokenizer(model_dir);
    ranks_ = DataParallel::join(r_, read_launch_env(), place_.device);  // one process: nothing to join
    dcfg_ = r_.data;
    if (dcfg_.cache_dir.empty()) dcfg_.cache_dir = out_ / "cache";
    DataReport report;
    ranks_->main_first("building the token cache", [&] { data_ = build_dataset(dcfg_, *tok, model_dir, &report, console()); });
    if (ranks_->is_main()) std::cerr << console_line(r_.logging.console == "json", format_report(report));
    if (opts_.dry_run) {
      std::cerr << "dry run: recipe, model config (" << family_name(mcfg.family) << ", " << mcfg.num_hidden_layers
                << " layers), tokenizer and data are valid; " << data_.train->size() << " training examples\n";
      return false;
    }

    // One process per run directory (rank 0 for all ranks); then what a crash of the previous one left is cleaned up.
    if (ranks_->is_main()) try {
      lock_.emplace(out_);
    } catch (const Error&) {
      throw;  // another process holds it: already says so
    } catch (const std::runtime_error& e) {
      throw Error(ExitCode::kFailure, "output_dir '" + out_.string() + "' (" + r_.source.string() + "): " + e.what());
    }
    if (ranks_->is_main()) {
      recover_after_crash(out_);
      checkpoints_.recover_after_crash();
    }
    ranks_->barrier("rank 0 locks and cleans " + out_.string());
    // Never mix two runs in one directory: a finished or interrupted run is continued or moved aside.
    std::optional<fs::path> resume_from;
    if (opts_.resume) resume_from = checkpoints_.resolve_resume(*opts_.resume);
    else checkpoints_.require_empty();
    if (ranks_->is_main()) write_file_atomic(out_ / "config.yaml", "# resolved by qtrain from " + r_.source.string() + "\n" + recipe_to_yaml(r_));
    if (ranks_->is_main()) write_data_report(out_ / "data_report.json", report, data_.train.get());

    OptimizerSection opt_config = r_.optimizer;
    if (place_.device.is_cuda()) opt_config = check_memory_plan(mcfg);

    LoadOptions lo;
    lo.dtype = place_.compute;
    lo.device = place_.device;
    lo.console = console();
    if (r_.quantization.enabled)
      lo.quantize = ops::QuantParams{r_.quantization.quant_type, r_.quantization.blocksize, r_.quantization.double_quant};
    const auto t_load = Clock::now();
    model_ = std::make_unique<LlamaModel>(LlamaModel::load(model_dir, lo));
    const double load_s = seconds_since(t_load);
    LoraSpec spec;
    spec.targets = r_.model.target_modules;
    spec.config.rank = r_.lora.r;
    spec.config.alpha = r_.lora.alpha;
    spec.config.dropout = r_.lora.dropout;
    spec.config.scaling = r_.lora.rslora ? ops::LoraScaling::kRsLora : ops::LoraScaling::kStandard;
    spec.dtype = place_.lora;
    model_->add_lora(spec, at::make_generator<at::CPUGeneratorImpl>(r_.lora.init_seed.value_or(r_.training.seed)));
    optimizer_ = make_optimizer(opt_config, r_.training.weight_decay, model_->lora_parameters());
    ranks_->check_identical(optimizer_->params(), recipe_hash(r_));
    ctx_.training = true;
    ctx_.recompute = r_.training.recompute;
    ctx_.offload_checkpoints = r_.training.offload_checkpoints;
    ctx_.dropout_gen = make_dropout_generator(place_.device, ranks_->dropout_seed(r_.training.seed + 1));

    loader_ = std::make_unique<Loader>(data_.train, r_.training.micro_batch_size, dcfg_, dcfg_.seed, ranks_->rank(), ranks_->world());
    const int64_t k = r_.training.gradient_accumulation;
    total_ = r_.training.max_steps > 0
                 ? r_.training.max_steps
                 : std::max<int64_t>(1, static_cast<int64_t>(std::ceil(r_.training.epochs * loader_->batches_per_epoch() / k)));
    std::optional<int64_t> resumed_at;
    std::string resume_note;
    if (resume_from) {
      resume_note = restore(*resume_from);
      resumed_at = step_;
    } else if (opts_.resume) {
      resume_note = "--resume: " + out_.string() + " has no checkpoint yet; starting from step 0";
    }
    log_ = std::make_unique<MetricsLog>(out_ / "metrics.jsonl", total_, ranks_->is_main(), resumed_at);
    if (r_.logging.tensorboard) log_->add_tensorboard(out_, resumed_at, step_, recipe_to_yaml(r_));
    log_->set_console(console());
    log_->message("qtrain: " + std::string(family_name(mcfg.family)) + " " + model_dir.string() + " on " +
                  place_.device.str() + " (" + c10::toString(place_.compute) + "), base " +
                  (r_.quantization.enabled ? "NF4" : "dense") + " loaded in " + std::to_string(load_s).substr(0, 5) + " s, " +
                  std::to_string(optimizer_->params().size() / 2) + " LoRA adapters, " + std::to_string(total_) + " steps × " +
                  std::to_string(k) + " × " + std::to_string(r_.training.micro_batch_size) + ", " + optimizer_->kind() + " (" +
                  std::to_string(optimizer_->state_bytes() >> 20) + " MiB of state)");
    if (!resume_note.empty()) log_->message(resume_note);
    if (!ranks_->describe().empty()) log_->message(ranks_->describe());
    if (const PagedState* pg = optimizer_->pager(); pg && pg->paged())
      log_->message("optimizer state paged: " + std::to_string(pg->num_pages()) + " pages of " + std::to_string(pg->page_bytes() >> 10) +
                    " KiB in host memory, " + std::to_string(pg->slots()) + " on the device at a time");
    return true;
  }

  // The pre-flight check (issue 13): the memory plan against the GPU's memory, before anything is loaded. A
  // paged optimizer without a budget gets what the plan leaves free. Returns the optimizer settings to use.
  OptimizerSection check_memory_plan(const ModelConfig& mcfg) {
    OptimizerSection o = r_.optimizer;
#if defined(QTRAIN_WITH_CUDA)
    size_t free = 0, total = 0;
    if (cudaMemGetInfo(&free, &total) != cudaSuccess) return o;
    const PlanSettings ps = plan_settings(r_, mcfg, /*cuda=*/true);
    const MemoryPlan plan = plan_memory(ps, static_cast<double>(total));
    if (plan.peak > static_cast<double>(total) && opts_.plan_check) {
      PlanSettings paged = ps;
      paged.optimizer.bits = 8;
      paged.optimizer.paged = true;
      paged.offload_checkpoints = true;
      throw UsageError(r_.source.string() + ": this run needs about " + human_bytes(plan.peak) + " of device memory and the GPU has " +
                       human_bytes(static_cast<double>(total)) + ":\n" + format_plan(plan, ps) +
                       "fits: data.max_seq_len up to " + std::to_string(longest_fitting_context(ps, total)) + " at this micro-batch, " +
                       "training.micro_batch_size up to " + std::to_string(largest_fitting_batch(ps, total)) +
                       "; with optimizer.name: paged_adamw_8bit and training.offload_checkpoints: true, up to " +
                       std::to_string(longest_fitting_context(paged, total)) + " tokens (qtrain plan " + r_.source.string() +
                       " shows more; --no-plan-check trains anyway)");
    }
    if (o.paged && o.device_budget_mb <= 0) {
      for (const MemoryPart& part : plan.parts)
        if (part.name == "optimizer state") o.device_budget_mb = part.bytes / (1024.0 * 1024.0);
    }
#else
    (void)mcfg;
#endif
    return o;
  }

  // One optimizer step of k micro-batches. A stop request between micro-batches abandons the step and
  // puts the data cursor and the dropout stream back, so the checkpoint written next is exactly the
  // state after the last complete step.
  StepResult one_step(const std::function<bool()>& stopping) {
    const Cursor cursor = loader_->cursor();
    const at::Tensor rng = ctx_.dropout_gen.get_state();
    std::vector<Batch> batches;
    for (int64_t i = 0; i < r_.training.gradient_accumulation; ++i) batches.push_back(loader_->next());
    StepSettings ss;
    ss.update = step_ + 1;
    ss.lr = learning_rate_at(r_.training.schedule, r_.training.learning_rate, step_, r_.training.warmup_steps, total_);
    ss.max_grad_norm = r_.training.max_grad_norm;
    StepResult s = train_step(*model_, *optimizer_, batches, ss, ctx_, ranks_->step_reduce(), ranks_->within_step(stopping));
    if (s.interrupted) {
      loader_->restore(cursor);
      ctx_.dropout_gen.set_state(rng);
      return s;
    }
    if (!s.finite) {
      if (r_.training.on_nan == NanPolicy::kStop) {
        log_->message("error: loss or gradient is not finite at step " + std::to_string(step_ + 1) +
                      "; stopping (the last checkpoint is intact; training.on_nan: skip would skip such steps)");
        throw Error(ExitCode::kFailure, "non-finite loss at step " + std::to_string(step_ + 1));
      }
      // Skipped: the batch is consumed but no update happens, so the step counter (schedule, Adam's
      // bias correction, checkpoints) keeps counting updates. A run that only produces NaN stops.
      log_->message("warning: non-finite loss or gradient at step " + std::to_string(step_ + 1) + "; batch skipped");
      if (++skipped_in_a_row_ == kMaxSkippedInARow)
        throw Error(ExitCode::kFailure, std::to_string(kMaxSkippedInARow) + " consecutive non-finite steps at step " +
                                            std::to_string(step_ + 1) + "; stopping (the last checkpoint is intact)");
      return s;
    }
    skipped_in_a_row_ = 0;
    ++step_;
    tokens_ += s.tokens;
    last_lr_ = ss.lr;
    return s;
  }

  bool due(int64_t every) const { return every > 0 && step_ % every == 0 && step_ != total_; }

  // An evaluation belongs to step 0, every eval_every steps and the last step, once each: a resumed run
  // redoes one that a stop interrupted (metrics.jsonl has no record of it) and no other.
  bool eval_due() const {
    // Rank 0 evaluates; the others wait for it at the next collective.
    if (!ranks_->is_main() || !data_.eval || data_.eval->size() == 0 || log_->has("eval", step_)) return false;
    return step_ == 0 || step_ == total_ || due(r_.schedule.eval_every);
  }

  // What this run's console shows; only rank 0 shows progress (it speaks for the run).
  ConsoleOptions console() const {
    return {r_.logging.console == "json", r_.logging.quiet || (ranks_ && !ranks_->is_main())};
  }

  void log_step(const StepResult& s, Clock::time_point t0) {
    tokens_since_log_ += s.tokens;
    result_.final_loss = s.loss;
    ++steps_this_run_;
    if (step_ % r_.schedule.log_every != 0 && step_ != total_) return;
    const double dt = seconds_since(last_log_time_.value_or(t0));
    last_log_time_ = Clock::now();
    log_->record("train", step_, {{"loss", s.loss}, {"lr", last_lr_}, {"grad_norm", s.grad_norm},
                                  {"tokens_per_s", tokens_since_log_ / std::max(dt, 1e-9)}, {"peak_mem_mib", peak_host_memory_mib()},
                                  {"tokens", static_cast<double>(tokens_)},
                                  {"eta_s", seconds_since(t0) / static_cast<double>(steps_this_run_) * (total_ - step_)}});
    tokens_since_log_ = 0;
  }

  // Evaluates on the held-out split and records it at the current step (the first and the last
  // evaluation of this process also go into the summary). False when a stop request interrupted it:
  // nothing is recorded then.
  bool evaluate_and_log(const std::function<bool()>& stopping) {
    log_->end_live_line();
    const EvalResult e = evaluate(*model_, data_.eval, r_.training.micro_batch_size, dcfg_, r_.schedule.eval_batches,
                                  ranks_->within_step(stopping), console());
    if (e.interrupted) return false;
    log_->record("eval", step_, {{"eval_loss", e.loss}, {"eval_ppl", std::exp(e.loss)}, {"eval_token_acc", e.token_acc}});
    if (step_ == 0) result_.eval_loss_first = e.loss, result_.eval_acc_first = e.token_acc;  // before training
    result_.eval_loss_last = e.loss;
    result_.eval_acc_last = e.token_acc;
    return true;
  }

  void save() {
    TrainerState s;
    s.step = step_;
    s.tokens = tokens_;
    const Cursor c = loader_->cursor();
    s.cursor_epoch = c.epoch;
    s.cursor_position = c.position;
    s.cursor_seed = c.seed;
    s.total_steps = total_;
    s.rng_state = ctx_.dropout_gen.get_state();
    s.rng_device = place_.device.is_cuda() ? "cuda" : "cpu";
    s.recipe_hash = recipe_hash(r_);
    s.optimizer = optimizer_->kind();
    s.optimizer_state = optimizer_->state();
    const fs::path dir = ranks_->save_checkpoint(checkpoints_, s, optimizer_->params(), adapter_info(r_));
    saved_step_ = step_;
    log_->message("checkpoint: " + dir.string());
  }

  // Loads a checkpoint into the model, the optimizer, the loader and the RNG. Returns what to tell the user.
  std::string restore(const fs::path& ck) {
    NamedTensors saved;
    const TrainerState s = checkpoints_.load(ck, &saved);
    const std::string state_file = (ck / "trainer_state.h5").string();
    const std::string device = place_.device.is_cuda() ? "cuda" : "cpu";
    // CPU (mt19937) and CUDA (Philox) generator states are different things: the dropout stream
    // cannot continue across them, so a bit-exact resume is impossible. Say so instead of failing
    // somewhere inside c10.
    if (s.rng_device != device)
      throw UsageError(state_file + " was trained on " + s.rng_device + " and this run is on " + device +
                       ": its dropout random stream cannot continue on another device type; resume with training.device: " +
                       s.rng_device);
    // The generator's state is a fixed-size blob per generator kind; a wrong one would fail inside c10.
    const int64_t rng_bytes = ctx_.dropout_gen.get_state().numel();
    if (!s.rng_state.defined() || s.rng_state.numel() != rng_bytes)
      throw InputError(state_file + ": rng_state has " + std::to_string(s.rng_state.defined() ? s.rng_state.numel() : 0) +
                       " bytes, the " + device + " dropout generator's state has " + std::to_string(rng_bytes));
    if (s.optimizer != optimizer_->kind())
      throw UsageError(state_file + " holds " + s.optimizer + " optimizer state; the recipe asks for " + optimizer_->kind());
    std::map<std::string, at::Tensor> by_name(saved.begin(), saved.end());
    at::NoGradGuard ng;
    for (const auto& [name, p] : optimizer_->params()) {
      auto it = by_name.find(name);
      if (it == by_name.end() || it->second.sizes() != p.sizes())
        throw InputError((ck / "adapter").string() + ": adapter tensor '" + name + "' is missing or has another shape than " +
                         c10::str(p.sizes()));
      p.copy_(it->second);
    }
    optimizer_->load_state(s.optimizer_state, state_file);
    ctx_.dropout_gen.set_state(ranks_->resumed_rng(ck, s.rng_state));
    loader_->restore(ranks_->resumed_cursor(ck, Cursor{s.cursor_epoch, s.cursor_position, s.cursor_seed}, data_.train,
                                            r_.training.micro_batch_size, dcfg_));
    step_ = s.step;
    tokens_ = s.tokens;
    saved_step_ = s.step;
    std::string note = "resumed from " + ck.string() + " at step " + std::to_string(step_);
    // A changed max_steps moves the schedule's horizon: a decaying schedule is stretched (or squeezed)
    // from here on, which changes this step's learning rate. That is what extending a run means; say it.
    if (s.total_steps != total_ && r_.training.schedule != Schedule::kConstant && step_ < total_) {
      const double before = learning_rate_at(r_.training.schedule, r_.training.learning_rate, step_, r_.training.warmup_steps, s.total_steps);
      const double after = learning_rate_at(r_.training.schedule, r_.training.learning_rate, step_, r_.training.warmup_steps, total_);
      note += "\nnote: the run had " + std::to_string(s.total_steps) + " steps and now has " + std::to_string(total_) +
              ": the learning-rate schedule is stretched to the new length, so step " + std::to_string(step_ + 1) + " uses " +
              std::to_string(after) + " instead of " + std::to_string(before);
    }
    return note;
  }

  TrainResult finish(Clock::time_point t0, const std::function<bool()>& stopping, const StopSignalGuard& stop) {
    // The final evaluation comes before the final checkpoint: a run killed in between resumes from an
    // earlier checkpoint (and drops this record); one stopped during it saves the last step and the
    // resumed run evaluates it (eval_due); one killed after has the record and does not redo it.
    if (eval_due() && !evaluate_and_log(stopping)) return interrupted(stop);
    if (saved_step_ != step_) save();
    ranks_->main_first("writing the adapter", [&] {
      if (ranks_->is_main()) save_peft_adapter(out_ / "adapter", optimizer_->params(), adapter_info(r_), place_.lora);
    });
    result_.steps = step_;
    std::string summary = "done: " + std::to_string(step_) + " steps in " + std::to_string(static_cast<int>(seconds_since(t0))) +
                          " s, " + std::to_string(tokens_) + " target tokens, final loss " + std::to_string(result_.final_loss);
    if (result_.eval_loss_first && result_.eval_loss_last)
      summary += "\n  held-out loss " + std::to_string(*result_.eval_loss_first) + " → " + std::to_string(*result_.eval_loss_last) +
                 ", next-token accuracy " + std::to_string(100 * *result_.eval_acc_first).substr(0, 5) + "% → " +
                 std::to_string(100 * *result_.eval_acc_last).substr(0, 5) + "%";
    summary += "\n  adapter (PEFT): " + (out_ / "adapter").string();
    log_->message(summary);
    if (r_.logging.report && ranks_->is_main()) log_->message(write_run_report_at_end(out_));
    return result_;
  }

  TrainResult interrupted(const StopSignalGuard& stop) {
    if (saved_step_ != step_ && step_ > 0) save();  // before the first step there is nothing to save
    log_->message("stopped by signal " + std::to_string(ranks_->stop_signal(stop.signal())) + " at step " + std::to_string(step_) +
                  "; resume with: qtrain train " + r_.source.string() + " --resume");
    if (r_.logging.report && ranks_->is_main()) log_->message(write_run_report_at_end(out_));
    result_.interrupted = true;
    result_.steps = step_;
    return result_;
  }

  const Recipe& r_;
  const TrainOptions& opts_;
  const Placement place_;
  const Tf32Scope tf32_;
  const fs::path out_;
  Checkpointer checkpoints_;
  DataConfig dcfg_;
  TokenizedDataset data_;
  std::unique_ptr<LlamaModel> model_;
  std::unique_ptr<Optimizer> optimizer_;
  std::unique_ptr<Loader> loader_;
  std::unique_ptr<MetricsLog> log_;
  std::unique_ptr<DataParallel> ranks_ = std::make_unique<DataParallel>();  // the ranks of a multi-process run (set_up joins them)
  std::optional<DirectoryLock> lock_;  // held from set-up to the end of the run
  RunContext ctx_;
  int64_t total_ = 0, step_ = 0, tokens_ = 0;
  int64_t saved_step_ = -1;  // a step already on disk is not written twice
  int skipped_in_a_row_ = 0;
  double last_lr_ = 0;
  int64_t tokens_since_log_ = 0, steps_this_run_ = 0;
  std::optional<Clock::time_point> last_log_time_;
  TrainResult result_;
};

}  // namespace

TrainResult train(const Recipe& recipe, const TrainOptions& options) { return Trainer(recipe, options).run(); }

}  // namespace qtrain
