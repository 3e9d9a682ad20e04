// SIGINT / SIGTERM (Ctrl-C, Slurm pre-emption) turn into a request the training loop polls between
// micro-batches and eval batches: it then writes a checkpoint of the last complete step and exits
// cleanly. A second signal exits at once (status 128 + signal), leaving the last complete checkpoint. The flag is the one piece of process-wide
// state in qtrain, because a signal handler can reach nothing else; the guard scopes it to a run.
#pragma once

namespace qtrain {

class StopSignalGuard {
 public:
  StopSignalGuard();   // installs the handlers
  ~StopSignalGuard();  // restores the previous ones
  StopSignalGuard(const StopSignalGuard&) = delete;
  StopSignalGuard& operator=(const StopSignalGuard&) = delete;

  bool requested() const;
  int signal() const;  // which one arrived (0 if none)
};

}  // namespace qtrain
