// qtrain eval: being built in this session (issue 10).
#include "data/error.h"
#include "trainer/cli/cli.h"

namespace qtrain::cli {

int run_eval(const std::vector<std::string>&) { throw UsageError("qtrain eval is not built yet"); }

}  // namespace qtrain::cli
