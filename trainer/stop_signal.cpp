#include "trainer/stop_signal.h"

#include <atomic>
#include <csignal>

namespace qtrain {
namespace {
std::atomic<int> g_signal{0};  // see the header: a handler can only reach static storage
struct sigaction g_old_int, g_old_term;

void on_signal(int sig) { g_signal.store(sig); }
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
