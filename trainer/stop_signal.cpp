#include "trainer/stop_signal.h"

#include <unistd.h>

#include <atomic>
#include <csignal>

namespace qtrain {
namespace {
std::atomic<int> g_signal{0};  // see the header: a handler can only reach static storage
struct sigaction g_old_int, g_old_term;

void on_signal(int sig) {
  if (g_signal.exchange(sig) != 0) {
    // The second signal: the user (or the scheduler) will not wait for the checkpoint. Every
    // checkpoint on disk is complete (written aside, renamed into place), so leaving now loses only
    // the one being written. Only async-signal-safe calls here.
    static const char msg[] = "\nqtrain: second signal, exiting now (the last complete checkpoint is intact)\n";
    ssize_t ignored = ::write(STDERR_FILENO, msg, sizeof msg - 1);
    (void)ignored;
    ::_exit(128 + sig);
  }
}
}  // namespace

StopSignalGuard::StopSignalGuard() {
  g_signal.store(0);
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &g_old_int);
  sigaction(SIGTERM, &sa, &g_old_term);
}

StopSignalGuard::~StopSignalGuard() {
  sigaction(SIGINT, &g_old_int, nullptr);
  sigaction(SIGTERM, &g_old_term, nullptr);
}

bool StopSignalGuard::requested() const { return g_signal.load() != 0; }
int StopSignalGuard::signal() const { return g_signal.load(); }

}  // namespace qtrain
