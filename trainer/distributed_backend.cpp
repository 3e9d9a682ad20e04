#include "trainer/distributed_backend.h"

#include <cstdlib>

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#ifdef QTRAIN_WITH_CUDA
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include "data/error.h"

namespace qtrain {

c10::intrusive_ptr<c10d::Backend> make_process_group(const c10::intrusive_ptr<c10d::Store>& store, int rank, int world, bool nccl,
                                                     std::chrono::milliseconds timeout) {
  if (nccl) {
#ifdef QTRAIN_WITH_CUDA
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = timeout;
    return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, opts);
#else
    throw UsageError("distributed: NCCL needs a CUDA build of qtrain (this one was configured with QTRAIN_CUDA=OFF or without nvcc)");
#endif
  }
  // GLOO_SOCKET_IFNAME picks the network interface, as it does for PyTorch; by default Gloo binds to
  // the address this host's name resolves to, or the loopback address when it does not resolve.
  if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname && *ifname) {
    auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
    opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
    return c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, opts);
  }
  auto opts = c10d::ProcessGroupGloo::Options::create_default(timeout);
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, opts);
}

}  // namespace qtrain
