// SIGINT / SIGTERM (Ctrl-C, Slurm pre-emption) turn into a request the training loop polls between
// steps: it then writes a checkpoint and exits cleanly. The flag is the one piece of process-wide
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
